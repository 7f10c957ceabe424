"""The functional core, in microseconds: invariant 2 (docs/architecture.md) and the
decision rules."""

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tests.support.braze import BRAZE_EXAMPLES
from txmail.core.events import Postback, SendRegistration, Trigger, event_id
from txmail.workers.state import (
    Decision,
    Event,
    Message,
    Outcome,
    PostbackEvent,
    RegistrationEvent,
    claim_deadline,
    deadline,
    evolve,
    fallback_request,
    merge,
    outcome,
)
from txmail.workers.timeouts import DeliveryTimeouts

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUTS = DeliveryTimeouts(timedelta(minutes=10), {"slow": timedelta(hours=2)})
STATUSES = ("sent", "processed", "aborted", "delivered", "bounced", "deferred")


def postback_event(status: str, at: int = 0, **metadata: object) -> PostbackEvent:
    """The pure core's event for send o1, ``at`` seconds after T0 (tests of the store and
    the tracker take tests.support.factories.postback, decoded as a worker decodes it)."""
    raw = {
        "dispatch_id": "d1",
        "status": status,
        "metadata": {"external_send_id": "o1", **metadata},
    }
    return PostbackEvent(
        event_id=event_id(raw),
        received_at=T0 + timedelta(seconds=at),
        postback=Postback.model_validate(raw),
    )


def registration_event(at: int = 0, **fields: object) -> RegistrationEvent:
    body = {"external_send_id": "o1", **fields}
    return RegistrationEvent(
        event_id=event_id(body),
        received_at=T0 + timedelta(seconds=at),
        registration=SendRegistration.model_validate(body),
    )


def fold(events: list[Event]) -> Message:
    message = Message(key="send:o1")
    for event in events:
        message = merge(message, event)
    return message


events = st.lists(
    st.one_of(
        st.builds(
            postback_event,
            st.sampled_from(STATUSES),
            st.integers(0, 5),
            reason=st.sampled_from(["550 no such user", "User not emailable"]),
        ),
        st.builds(
            registration_event, st.integers(0, 5), campaign_api_id=st.sampled_from(["c1", "c2"])
        ),
    ),
    max_size=12,
)
# In time, late, missing or unreadable, against a 10-minute deadline from T0.
DELIVERED_AT = ("2026-01-01T00:09:00+00:00", "2026-01-01T00:11:00+00:00", None, "soon")
delivered_events = st.builds(
    lambda at, when: postback_event(
        "delivered", at, **({} if when is None else {"delivered_at": when})
    ),
    st.integers(0, 5),
    st.sampled_from(DELIVERED_AT),
)


@given(events, st.data())
def test_state_is_a_function_of_the_set_of_events(
    history: list[Event], data: st.DataObject
) -> None:
    copies = data.draw(st.lists(st.sampled_from(history))) if history else []
    replayed = data.draw(st.permutations(history + copies))
    assert fold(replayed) == fold(history)


@given(events, st.data())
def test_evolve_in_batches_decides_once_and_agrees_with_one_batch(
    history: list[Event], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(history)))
    first, first_decision = evolve(Message(key="send:o1"), history[:cut], T0)
    second, second_decision = evolve(first, history[cut:], T0)
    whole, _ = evolve(Message(key="send:o1"), history, T0)
    assert outcome(second) == outcome(whole)
    assert not (first_decision and second_decision)
    assert (second.decision is not None) == (outcome(whole) in {Outcome.BOUNCED, Outcome.ABORTED})


@given(
    st.lists(st.one_of(delivered_events, st.builds(postback_event, st.sampled_from(STATUSES)))),
    st.data(),
)
def test_after_a_timeout_any_order_of_the_rest_gives_the_same_outcome(
    rest: list[Event], data: st.DataObject
) -> None:
    claimed, decision = claim_deadline(
        fold([postback_event("sent")]), TIMEOUTS, T0 + timedelta(hours=1), braze_health="healthy"
    )
    assert decision is not None
    copies = data.draw(st.lists(st.sampled_from(rest))) if rest else []
    replayed = data.draw(st.permutations(rest + copies))
    in_order, _ = evolve(claimed, rest, T0 + timedelta(hours=2))
    shuffled, _ = evolve(claimed, replayed, T0 + timedelta(hours=2))
    assert shuffled == in_order
    assert outcome(shuffled) == outcome(in_order)


def test_a_delivered_stamped_in_time_after_a_timeout_is_a_premature_fallback() -> None:
    claimed, _ = claim_deadline(
        fold([postback_event("sent")]), TIMEOUTS, T0 + timedelta(minutes=10), braze_health="healthy"
    )
    assert claimed.decision is not None
    assert claimed.decision.deadline == T0 + timedelta(minutes=10)

    def after(**metadata: object) -> Outcome:
        return outcome(evolve(claimed, [postback_event("delivered", 900, **metadata)], T0)[0])

    assert after(delivered_at="2026-01-01T00:09:59+00:00") == Outcome.PREMATURE_FALLBACK
    assert after(delivered_at="2026-01-01T00:10:00+00:00") == Outcome.PREMATURE_FALLBACK
    assert after(delivered_at="2026-01-01T00:10:01+00:00") == Outcome.DELIVERED_LATE
    assert after(delivered_at="not a time") == Outcome.DELIVERED_LATE
    assert after() == Outcome.DELIVERED_LATE
    # A decision stored before decisions kept their deadline: no way to tell, so late.
    old = claimed.model_copy(
        update={"decision": claimed.decision.model_copy(update={"deadline": None})}
    )
    in_time = postback_event("delivered", 900, delivered_at="2026-01-01T00:09:00+00:00")
    assert outcome(evolve(old, [in_time], T0)[0]) == Outcome.DELIVERED_LATE


def test_failure_outranks_delivered_outranks_in_flight() -> None:
    assert outcome(fold([postback_event("sent")])) == Outcome.IN_FLIGHT
    assert outcome(fold([postback_event("sent"), postback_event("delivered")])) == Outcome.DELIVERED
    assert (
        outcome(fold([postback_event("delivered"), postback_event("bounced", 9)]))
        == Outcome.BOUNCED
    )
    assert outcome(fold([postback_event("aborted"), postback_event("bounced")])) == Outcome.BOUNCED


def test_unknown_status_is_kept_without_changing_the_outcome() -> None:
    message = fold([postback_event("deferred")])
    assert "deferred" in message.statuses
    assert outcome(message) == Outcome.IN_FLIGHT


def test_braze_examples_in_any_order_end_bounced_with_one_decision() -> None:
    events = [
        PostbackEvent(event_id=event_id(raw), received_at=T0, postback=Postback.model_validate(raw))
        for raw in BRAZE_EXAMPLES
    ]
    message, decision = evolve(Message(key="send:x"), list(reversed(events)), T0)
    assert outcome(message) == Outcome.BOUNCED
    assert decision is not None
    assert decision.trigger == Trigger.BOUNCED
    request = fallback_request(message)
    assert request.reason == "550 5.1.1 The email account that you tried to reach does not exist"
    assert request.braze_timestamps["sent_at"] == "2020-08-31T18:58:42.000+00:00"


def test_deadline_is_armed_from_sent_at_and_uses_the_campaign_timeout() -> None:
    message = fold([postback_event("sent", 30, sent_at="2026-01-01T00:00:10+00:00")])
    assert deadline(message, TIMEOUTS) == T0 + timedelta(minutes=10, seconds=10)
    slow = fold([postback_event("processed", 30, campaign_api_id="slow")])
    assert deadline(slow, TIMEOUTS) == T0 + timedelta(hours=2, seconds=30)
    assert deadline(fold([postback_event("sent"), postback_event("delivered")]), TIMEOUTS) is None


def test_deadline_claim_then_delivered_is_delivered_late() -> None:
    message = fold([postback_event("sent")])
    unchanged, none = claim_deadline(
        message, TIMEOUTS, T0 + timedelta(minutes=9), braze_health="healthy"
    )
    assert none is None
    assert unchanged == message
    claimed, decision = claim_deadline(
        message, TIMEOUTS, T0 + timedelta(minutes=10), braze_health="healthy"
    )
    assert decision is not None
    assert decision.trigger == Trigger.TIMEOUT
    assert outcome(claimed) == Outcome.TIMED_OUT
    assert (
        claim_deadline(claimed, TIMEOUTS, T0 + timedelta(hours=1), braze_health="healthy")[1]
        is None
    )
    late, again = evolve(claimed, [postback_event("delivered", 700)], T0 + timedelta(minutes=12))
    assert again is None
    assert outcome(late) == Outcome.DELIVERED_LATE


def test_a_delivered_stamped_after_the_deadline_leaves_it_armed_whatever_the_order() -> None:
    late = postback_event("delivered", 700, delivered_at="2026-01-01T00:11:00+00:00")
    # Heard of before the sweeper got to the deadline, or after: one timeout either way.
    first = fold([postback_event("sent"), late])
    assert deadline(first, TIMEOUTS) == T0 + timedelta(minutes=10)
    claimed_after, decision = claim_deadline(
        first, TIMEOUTS, T0 + timedelta(minutes=12), braze_health="healthy"
    )
    assert decision is not None
    assert decision.trigger == Trigger.TIMEOUT
    claimed_before, _ = claim_deadline(
        fold([postback_event("sent")]), TIMEOUTS, T0 + timedelta(hours=1), braze_health="healthy"
    )
    delivered_after, _ = evolve(claimed_before, [late], T0 + timedelta(hours=1))
    assert outcome(claimed_after) == outcome(delivered_after) == Outcome.DELIVERED_LATE


def test_a_delivered_stamped_by_the_deadline_or_ahead_of_its_arrival_disarms_it() -> None:
    in_time = postback_event("delivered", 700, delivered_at="2026-01-01T00:09:00+00:00")
    assert deadline(fold([postback_event("sent"), in_time]), TIMEOUTS) is None
    # A clock ahead: stamped after the deadline, but heard of long before it.
    ahead = postback_event("delivered", 60, delivered_at="2026-01-01T00:11:00+00:00")
    assert deadline(fold([postback_event("sent"), ahead]), TIMEOUTS) is None


def test_registration_without_sent_is_not_sent_with_its_own_timeout() -> None:
    message = fold([registration_event(recipient={"phone": "+15550100"}, delivery_timeout="90s")])
    assert deadline(message, TIMEOUTS) == T0 + timedelta(seconds=90)
    claimed, decision = claim_deadline(
        message, TIMEOUTS, T0 + timedelta(seconds=90), braze_health="healthy"
    )
    assert decision is not None
    assert decision.trigger == Trigger.NOT_SENT
    request = fallback_request(claimed)
    assert request.recipient.phone == "+15550100"
    assert request.dispatch_id is None
    assert request.external_send_id == "o1"


def test_a_claimed_deadline_keeps_braze_health_in_its_request() -> None:
    sent = fold([postback_event("sent")])
    claimed, decision = claim_deadline(
        sent, TIMEOUTS, T0 + timedelta(minutes=10), braze_health="degraded"
    )
    assert decision is not None
    assert decision.braze_health == "degraded"
    # Kept in the message the store persists, so the request read back is the same.
    stored = Message.model_validate_json(claimed.model_dump_json())
    assert fallback_request(stored).braze_health == "degraded"
    assert fallback_request(stored) == fallback_request(claimed)
    bounced, _ = evolve(sent, [postback_event("bounced", 60)], T0 + timedelta(minutes=1))
    assert fallback_request(bounced).braze_health is None  # only deadlines are stamped


def test_unreadable_sent_at_falls_back_to_arrival() -> None:
    message = fold([postback_event("sent", 5, sent_at="yesterday-ish")])
    assert deadline(message, TIMEOUTS) == T0 + timedelta(minutes=10, seconds=5)


def test_a_sent_at_after_the_arrival_does_not_postpone_the_deadline() -> None:
    # A clock ahead, or a wrong offset: Braze cannot have sent it after we heard of it.
    ahead = fold([postback_event("sent", 5, sent_at="2026-01-01T00:00:05-12:00")])
    assert deadline(ahead, TIMEOUTS) == T0 + timedelta(minutes=10, seconds=5)


def test_a_decision_without_braze_health_is_stored_as_the_version_before_wrote_it() -> None:
    # That version's models refuse unknown fields: during an upgrade its workers must
    # still read every failure decided by a newer one.
    bounced = Decision(trigger=Trigger.BOUNCED, decided_at=T0)
    timed_out = Decision(trigger=Trigger.TIMEOUT, decided_at=T0, braze_health="degraded")

    assert "braze_health" not in json.loads(bounced.model_dump_json())
    assert json.loads(timed_out.model_dump_json())["braze_health"] == "degraded"
    assert Decision.model_validate_json(bounced.model_dump_json()) == bounced

"""The store's reads for the console and its JSON endpoints, on SQLite and PostgreSQL."""

from datetime import UTC, datetime, timedelta

from tests.support.factories import postback, registration, tracked
from txmail.core.events import FALLBACK_ATTEMPT_TYPE, AttemptOutcome, FallbackAttempt
from txmail.workers.store.protocol import (
    AttemptCount,
    Delivery,
    MessageCount,
    PendingDeadlines,
    Store,
    TrackedEvent,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def attempt(
    handler: str | None, outcome: AttemptOutcome, at: datetime, detail: str = ""
) -> TrackedEvent:
    event = FallbackAttempt(
        idempotency_key=f"txm_{handler}_{at.timestamp()}",
        dispatch_id="d-bounced",
        external_send_id=None,
        handler=handler,
        attempt=1,
        outcome=outcome,
        detail=detail,
        at=at,
    )
    return tracked(FALLBACK_ATTEMPT_TYPE, event.model_dump(mode="json"), at)


async def test_messages_are_counted_by_outcome_and_trigger_since_a_time(store: Store) -> None:
    old = NOW - timedelta(days=2)
    await store.apply([postback("d-old", "bounced", old)], old)
    await store.apply(
        [
            postback("d1", "delivered", NOW),
            postback("d2", "delivered", NOW),
            postback("d3", "bounced", NOW, reason="550"),
            postback("d4", "sent", NOW),
        ],
        NOW,
    )
    counts = await store.message_counts(NOW - timedelta(hours=1))
    assert sorted(counts, key=lambda c: c.outcome) == [
        MessageCount("bounced", "bounced", 1),
        MessageCount("delivered", None, 2),
        MessageCount("in_flight", None, 1),
    ]
    assert len(await store.message_counts(old)) == 3


async def test_attempts_are_counted_by_handler_and_outcome_and_the_latest_is_kept(
    store: Store,
) -> None:
    await store.apply(
        [
            attempt("sms", AttemptOutcome.RETRYING, NOW - timedelta(hours=3)),
            attempt("sms", AttemptOutcome.RETRYING, NOW, "rules[0]: transient: answered 503"),
            attempt("sms", AttemptOutcome.RETRYING, NOW + timedelta(seconds=1), "circuit open: x"),
            attempt("hook", AttemptOutcome.SUCCEEDED, NOW),
            attempt(None, AttemptOutcome.NO_RULE, NOW),
        ],
        NOW,
    )
    since = NOW - timedelta(hours=1)
    counts = await store.attempt_counts(since)
    assert sorted(counts, key=lambda c: (c.handler or "", c.outcome)) == [
        AttemptCount(None, "no_rule", 1),
        AttemptCount("hook", "succeeded", 1),
        AttemptCount("sms", "retrying", 2),
    ]
    latest = await store.latest_attempts(since)
    assert [(a.handler, a.outcome, a.detail) for a in latest] == [
        ("hook", "succeeded", ""),
        ("sms", "retrying", "circuit open: x"),
    ]
    assert latest[1].at == NOW + timedelta(seconds=1)


async def test_pending_deadlines_are_counted_with_the_earliest(store: Store) -> None:
    assert await store.pending_deadlines() == PendingDeadlines(0, None)
    await store.apply([postback("d1", "sent", NOW)], NOW)
    later = NOW + timedelta(minutes=1)
    await store.apply([postback("d2", "sent", later), postback("d3", "delivered", later)], later)
    assert await store.pending_deadlines() == PendingDeadlines(2, NOW + timedelta(minutes=10))


async def test_recent_failures_come_last_changed_first_and_filter_by_campaign_and_trigger(
    store: Store,
) -> None:
    for i, (status, campaign) in enumerate(
        [("bounced", "c-a"), ("aborted", "c-b"), ("delivered", "c-a"), ("bounced", "c-b")]
    ):
        at = NOW + timedelta(seconds=i)
        await store.apply(
            [postback(f"d{i}", status, at, campaign_api_id=campaign, reason=f"why {i}")], at
        )
    failures = await store.recent_failures(10)
    assert [(f.dispatch_id, f.outcome, f.trigger, f.reason) for f in failures] == [
        ("d3", "bounced", "bounced", "why 3"),
        ("d1", "aborted", "aborted", "why 1"),
        ("d0", "bounced", "bounced", "why 0"),
    ]
    assert [f.dispatch_id for f in await store.recent_failures(1)] == ["d3"]
    by_campaign = await store.recent_failures(10, campaign_api_id="c-b")
    assert [f.dispatch_id for f in by_campaign] == ["d3", "d1"]
    both = await store.recent_failures(10, campaign_api_id="c-b", trigger="aborted")
    assert [f.dispatch_id for f in both] == ["d1"]
    assert await store.recent_failures(10, campaign_api_id="c-\x00") == []


async def test_deliveries_give_brazes_sent_and_delivered_times(store: Store) -> None:
    await store.apply(
        [
            registration(NOW, external_send_id="o1"),
            postback("d1", "sent", NOW, external_send_id="o1", sent_at="2026-03-01T11:59:00Z"),
            postback(
                "d1",
                "delivered",
                NOW,
                external_send_id="o1",
                delivered_at="2026-03-01T11:59:04Z",
            ),
            postback("d2", "delivered", NOW),
            postback("d3", "bounced", NOW, bounced_at="2026-03-01T11:59:04Z"),
        ],
        NOW,
    )
    deliveries = await store.deliveries(NOW - timedelta(hours=1), 100)
    assert sorted(deliveries, key=lambda d: d.sent_at or "") == [
        Delivery(None, None),
        Delivery("2026-03-01T11:59:00Z", "2026-03-01T11:59:04Z"),
    ]
    assert len(await store.deliveries(NOW - timedelta(hours=1), 1)) == 1

"""The tracker's logic on a batch of deliveries, on real stores and without a broker:
what is applied, how each delivery is settled, which fallbacks are to be published."""

import asyncio
import itertools
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.support.braze import BRAZE_EXAMPLES
from tests.support.factories import NOT_THE_CONTRACT, decoded, outgoing_postback, raw_postback
from tests.support.histories import Histories, Postbacks, expected_messages, histories, postbacks_of
from tests.support.poison import refuse_poison
from txmail.core.broker import Outgoing
from txmail.core.events import (
    FALLBACK_ATTEMPT_TYPE,
    SEND_REGISTERED_ROUTING_KEY,
    SEND_REGISTRATION_TYPE,
    AttemptOutcome,
    FallbackAttempt,
    event_id,
    utc_now,
)
from txmail.workers.batch import AppliedBatch, Settle, apply_batch
from txmail.workers.decisions import request_message
from txmail.workers.state import Outcome, outcome, reason
from txmail.workers.store import open_store
from txmail.workers.store.protocol import PendingRequest, Store
from txmail.workers.sweeper import sweep_claims
from txmail.workers.timeouts import DeliveryTimeouts
from txmail.workers.watermark import WatermarkRule, WorkerProgress

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMEOUTS = DeliveryTimeouts(timedelta(seconds=1))
# Braze silent, the worker caught up: deadlines up to the sweep's own time are due.
CAUGHT_UP = WatermarkRule(timedelta(0), timedelta(0), timedelta(milliseconds=100))


class CaughtUp:
    """The progress of a worker with nothing left in its queue or its hands."""

    def progress(self, now: datetime) -> WorkerProgress:
        return WorkerProgress("w1", now, now, None, None, None)


async def _apply(store: Store, *messages: Outgoing) -> AppliedBatch:
    return await apply_batch(store, [decoded(m, T0) for m in messages], asyncio.Event())


async def _sweep(store: Store, now: datetime) -> list[PendingRequest]:
    return [p async for batch in sweep_claims(store, CaughtUp(), CAUGHT_UP, now) for p in batch]


def _settled_as(applied: AppliedBatch) -> list[Settle]:
    return [s.kind for s in applied.settlements]


async def test_braze_examples_twice_make_one_fallback_request(database_url: str) -> None:
    store = await open_store(database_url, TIMEOUTS)
    messages = [outgoing_postback(raw, T0) for raw in BRAZE_EXAMPLES]
    try:
        applied = await _apply(store, *messages, *messages[::-1])
        message = await store.find(dispatch_id=BRAZE_EXAMPLES[0]["dispatch_id"])
    finally:
        await store.close()
    assert _settled_as(applied) == [Settle.ACK] * 2 * len(messages)
    [decided] = applied.decided
    assert decided.request.trigger == "bounced"
    assert request_message(decided.request).message_id == decided.request.idempotency_key
    assert message is not None
    assert message.outcome == Outcome.BOUNCED
    assert len(message.timeline) == 5


async def test_what_is_not_the_contract_is_dead_lettered_and_the_rest_applied(
    database_url: str,
) -> None:
    bad = NOT_THE_CONTRACT
    good = outgoing_postback(raw_postback("after-poison", "delivered"), T0)
    store = await open_store(database_url, TIMEOUTS)
    try:
        applied = await _apply(store, *bad, good)
        message = await store.find(dispatch_id="after-poison")
    finally:
        await store.close()
    # At once, by the worker, not after going round the queue to the delivery limit.
    assert _settled_as(applied) == [Settle.DEAD_LETTER] * len(bad) + [Settle.ACK]
    assert message is not None
    assert message.outcome == Outcome.DELIVERED


async def test_a_message_the_store_cannot_take_is_requeued_and_its_neighbours_applied(
    postgres_schema_url: str,
) -> None:
    # A trigger refuses one message: valid by the contract, yet it fails in the store
    # every time, like a bug would. Its neighbours in the batch must still be applied.
    store = await open_store(postgres_schema_url, TIMEOUTS)
    try:
        await refuse_poison(postgres_schema_url)
        applied = await _apply(
            store,
            outgoing_postback(raw_postback("before", "delivered"), T0),
            outgoing_postback(raw_postback("poison", "sent"), T0),
            outgoing_postback(raw_postback("after", "delivered"), T0),
        )
        outcomes = [await _outcome(store, d) for d in ("before", "poison", "after")]
    finally:
        await store.close()
    assert _settled_as(applied) == [Settle.ACK, Settle.REQUEUE, Settle.ACK]
    assert "refusing the poison message" in str(applied.settlements[1].error)
    assert outcomes == [Outcome.DELIVERED, None, Outcome.DELIVERED]


async def _outcome(store: Store, dispatch_id: str) -> Outcome | None:
    message = await store.find(dispatch_id=dispatch_id)
    return message.outcome if message else None


async def test_deadline_fires_on_time_and_a_late_delivered_is_recorded_late(
    database_url: str,
) -> None:
    sent = raw_postback("slow", "sent", sent_at=T0.isoformat())
    store = await open_store(database_url, TIMEOUTS)
    try:
        await _apply(store, outgoing_postback(sent, T0))
        assert await _sweep(store, T0 + TIMEOUTS.default - timedelta(milliseconds=1)) == []
        [decided] = await _sweep(store, T0 + TIMEOUTS.default)
        assert await _sweep(store, T0 + 2 * TIMEOUTS.default) == []
        late = await _apply(store, outgoing_postback(raw_postback("slow", "delivered"), T0))
        message = await store.find(dispatch_id="slow")
    finally:
        await store.close()
    assert decided.request.trigger == "timeout"
    assert decided.request.decided_at == T0 + TIMEOUTS.default
    assert late.decided == []
    assert message is not None
    assert message.outcome == Outcome.DELIVERED_LATE


async def test_registered_send_never_sent_gets_a_fallback_with_its_recipient(
    database_url: str,
) -> None:
    registration = {
        "external_send_id": "order-1234",
        "campaign_api_id": "c1",
        "recipient": {"phone": "+15550100"},
        "variables": {"first_name": "Ada"},
        "delivery_timeout": "500ms",
    }
    registered = Outgoing(
        SEND_REGISTERED_ROUTING_KEY,
        json.dumps(registration).encode(),
        event_id(registration),
        SEND_REGISTRATION_TYPE,
        headers={"received_at": T0.isoformat()},
    )
    store = await open_store(database_url, TIMEOUTS)
    try:
        await _apply(store, registered)
        [decided] = await _sweep(store, T0 + timedelta(milliseconds=500))
        attempt = FallbackAttempt(
            idempotency_key=decided.request.idempotency_key,
            dispatch_id=None,
            external_send_id="order-1234",
            handler="sms",
            attempt=1,
            outcome=AttemptOutcome.SUCCEEDED,
            at=T0 + timedelta(seconds=1),
        )
        recorded = await _apply(
            store,
            Outgoing(
                attempt.routing_key,
                attempt.model_dump_json().encode(),
                attempt.event_id,
                FALLBACK_ATTEMPT_TYPE,
            ),
        )
        message = await store.find(external_send_id="order-1234")
    finally:
        await store.close()
    assert decided.request.trigger == "not_sent"
    assert decided.request.recipient.phone == "+15550100"
    assert decided.request.recipient.email is None
    assert decided.request.variables == {"first_name": "Ada"}
    assert _settled_as(recorded) == [Settle.ACK]
    assert message is not None
    assert len(message.timeline) == 2


async def test_a_decision_not_confirmed_is_swept_again_once_overdue(database_url: str) -> None:
    republish_after = timedelta(seconds=10)
    store = await open_store(database_url, TIMEOUTS, republish_after)
    try:
        decided_at = utc_now()
        bounced = outgoing_postback(raw_postback("refused", "bounced", reason="550"), T0)
        [decided] = (await _apply(store, bounced)).decided
        # Its publish was not confirmed (the broker refused it): nothing marks it.
        assert await _sweep(store, decided_at) == []
        overdue = decided_at + republish_after + timedelta(seconds=1)
        [again] = await _sweep(store, overdue)
        assert await _sweep(store, overdue) == [], "leased to the sweep that took it"
        await store.mark_published([again.message_key], overdue)
        assert await _sweep(store, overdue + 2 * republish_after) == []
    finally:
        await store.close()
    assert again.request == decided.request


async def _apply_in_batches(
    path: Path, postbacks: Postbacks, replayed: list[int], cuts: list[int]
) -> None:
    expected = expected_messages(postbacks)
    messages = [outgoing_postback(*postbacks[i]) for i in replayed]
    bounds = [0, *cuts, len(messages)]
    store = await open_store(f"sqlite:///{path}", TIMEOUTS)
    try:
        decided: list[PendingRequest] = []
        for start, end in itertools.pairwise(bounds):
            applied = await _apply(store, *messages[start:end])
            assert _settled_as(applied) == [Settle.ACK] * (end - start)
            decided += applied.decided
        for dispatch_id, (reference, count) in expected.items():
            message = await store.find(dispatch_id=dispatch_id)
            assert message is not None
            assert len(message.timeline) == count
            assert message.outcome == outcome(reference)
            assert message.reason == reason(reference)
            assert message.statuses == reference.statuses
    finally:
        await store.close()
    failed = [d for d, (reference, _) in expected.items() if reference.decision]
    assert Counter(p.request.dispatch_id for p in decided) == Counter(failed)


def test_any_order_duplicates_and_batches_give_the_same_states_and_one_decision(
    tmp_path: Path,
) -> None:
    """Invariants 2 and 3 on the tracker's batches (test_worker_properties.py holds them
    end to end, through RabbitMQ and a worker process, on fewer examples)."""

    @hypothesis_settings(max_examples=40, deadline=None)
    @given(histories, st.data())
    def example(history: Histories, data: st.DataObject) -> None:
        postbacks = postbacks_of("h", history, utc_now())
        indices = list(range(len(postbacks)))
        copies = data.draw(st.lists(st.sampled_from(indices))) if indices else []
        replayed = data.draw(st.permutations(indices + copies))
        cuts = data.draw(st.sets(st.integers(0, len(replayed)), max_size=4))
        path = tmp_path / f"{uuid.uuid4().hex}.db"
        asyncio.run(_apply_in_batches(path, postbacks, replayed, sorted(cuts)))

    example()

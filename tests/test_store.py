"""Both stores, same behaviour: every test here runs on SQLite and on PostgreSQL."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.support.braze import BRAZE_EXAMPLES
from tests.support.factories import postback, registration, tracked
from tests.support.waiting import wait_until
from txmail.core.events import (
    FALLBACK_ATTEMPT_TYPE,
    POSTBACK_TYPE,
    AttemptOutcome,
    FallbackAttempt,
    Trigger,
)
from txmail.workers.incoming import decode, received_at
from txmail.workers.state import Outcome
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store, TrackedEvent
from txmail.workers.timeouts import DeliveryTimeouts
from txmail.workers.watermark import WorkerProgress

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMEOUTS = DeliveryTimeouts(timedelta(minutes=10))


async def test_events_are_kept_once_and_decide_once(store: Store) -> None:
    events = [_braze(raw) for raw in BRAZE_EXAMPLES]
    first = await store.apply(events, NOW)
    again = await store.apply(list(reversed(events)), NOW + timedelta(seconds=1))
    assert [p.request.trigger for p in first] == [Trigger.BOUNCED]
    assert again == []
    message = await store.find(dispatch_id="acf471119f7449d579e8089032003ded")
    assert message is not None
    assert message.outcome == Outcome.BOUNCED
    assert message.reason is not None
    assert message.reason.startswith("550 5.1.1")
    assert [e.label for e in message.timeline].count("sent") == 1
    assert len(message.timeline) == 5
    assert message.decision is not None
    assert message.decision.request is not None
    assert (
        message.decision.request.braze_timestamps["bounced_at"] == "2020-08-31T18:58:43.000+00:00"
    )
    by_send = await store.find(external_send_id="34a2ceb3cf6184132f3d816e9984269a")
    assert by_send == message


async def test_unknown_messages_are_none(store: Store) -> None:
    assert await store.find(dispatch_id="nope") is None
    assert await store.find(external_send_id="nope") is None


async def test_a_redelivered_event_keeps_its_earliest_arrival(store: Store) -> None:
    await store.apply([postback("d1", "sent", NOW + timedelta(seconds=5))], NOW)
    await store.apply([postback("d1", "sent", NOW)], NOW)
    message = await store.find(dispatch_id="d1")
    assert message is not None
    assert message.statuses["sent"].received_at == NOW
    assert [e.received_at for e in message.timeline] == [NOW]


async def test_deadline_claimed_once_then_delivered_is_late(store: Store) -> None:
    sent_at = (NOW - timedelta(minutes=11)).isoformat()
    await store.apply([postback("d1", "sent", NOW, sent_at=sent_at)], NOW)
    claimed = await store.claim_due(NOW, 100)
    assert [p.request.trigger for p in claimed] == [Trigger.TIMEOUT]
    assert await store.claim_due(NOW + timedelta(hours=1), 100) == []
    late = await store.apply([postback("d1", "delivered", NOW)], NOW + timedelta(seconds=1))
    assert late == []
    message = await store.find(dispatch_id="d1")
    assert message is not None
    assert message.outcome == Outcome.DELIVERED_LATE
    assert message.decision is not None
    assert message.decision.trigger == "timeout"


async def test_a_delivered_stamped_in_time_after_the_timeout_is_counted_premature(
    store: Store,
) -> None:
    sent_at = NOW - timedelta(minutes=11)
    await store.apply([postback("d1", "sent", NOW, sent_at=sent_at.isoformat())], NOW)
    assert len(await store.claim_due(NOW, 100)) == 1
    in_time = (sent_at + timedelta(minutes=9)).isoformat()
    await store.apply([postback("d1", "delivered", NOW, delivered_at=in_time)], NOW)
    message = await store.find(dispatch_id="d1")
    assert message is not None
    assert message.outcome == Outcome.PREMATURE_FALLBACK
    assert (await store.counts()).premature_fallbacks == 1


async def test_delivered_in_time_disarms_the_deadline(store: Store) -> None:
    await store.apply([postback("d1", "processed", NOW)], NOW)
    assert (await store.counts()).pending_deadlines == 1
    await store.apply([postback("d1", "delivered", NOW)], NOW)
    assert (await store.counts()).pending_deadlines == 0
    assert await store.claim_due(NOW + timedelta(days=1), 100) == []


async def test_a_decision_not_published_is_leased_out_again(store: Store) -> None:
    decided = await store.apply([postback("d1", "aborted", NOW, reason="User not emailable")], NOW)
    assert len(decided) == 1
    assert await store.claim_unpublished(NOW, 10) == []  # the deciding worker publishes it
    later = NOW + timedelta(minutes=1)
    retried = await store.claim_unpublished(later, 10)
    assert [p.request for p in retried] == [decided[0].request]
    assert await store.claim_unpublished(later, 10) == []  # leased to the first caller
    await store.mark_published([decided[0].message_key], later)
    assert await store.claim_unpublished(NOW + timedelta(days=1), 10) == []
    message = await store.find(dispatch_id="d1")
    assert message is not None
    assert message.decision is not None
    assert message.decision.published_at == later


async def test_registration_without_sent_is_not_sent(store: Store) -> None:
    register = registration(
        NOW,
        external_send_id="order-1",
        campaign_api_id="c1",
        recipient={"email": "a@example.com", "phone": "+15550100"},
        variables={"order": 1234},
        delivery_timeout="2m",
    )
    await store.apply([register], NOW)
    assert await store.claim_due(NOW + timedelta(minutes=1), 10) == []
    [claimed] = await store.claim_due(NOW + timedelta(minutes=2), 10)
    assert claimed.request.trigger == Trigger.NOT_SENT
    assert claimed.request.recipient.phone == "+15550100"
    assert claimed.request.variables == {"order": 1234}
    message = await store.find(external_send_id="order-1")
    assert message is not None
    assert message.outcome == Outcome.TIMED_OUT


async def test_registration_and_postbacks_are_one_message(store: Store) -> None:
    await store.apply([postback("d1", "sent", NOW, external_send_id="order-2")], NOW)
    register = registration(
        NOW + timedelta(seconds=1), external_send_id="order-2", recipient={"email": "b@example.com"}
    )
    await store.apply([register], NOW)
    bounced = postback(
        "d1", "bounced", NOW + timedelta(seconds=2), external_send_id="order-2", reason="550"
    )
    [decided] = await store.apply([bounced], NOW)
    assert decided.request.recipient.email == "b@example.com"
    assert decided.request.dispatch_id == "d1"
    message = await store.find(dispatch_id="d1")
    assert message is not None
    assert [e.kind for e in message.timeline] == ["postback", "send_registration", "postback"]


async def test_fallback_attempts_land_on_the_timeline(store: Store) -> None:
    [decided] = await store.apply([postback("d1", "bounced", NOW)], NOW)
    attempt = FallbackAttempt(
        idempotency_key=decided.request.idempotency_key,
        dispatch_id="d1",
        external_send_id=None,
        handler="sms",
        attempt=1,
        outcome=AttemptOutcome.SUCCEEDED,
        at=NOW + timedelta(seconds=3),
    )
    event = tracked(FALLBACK_ATTEMPT_TYPE, attempt.model_dump(mode="json"), attempt.at)
    assert await store.apply([event, event], NOW) == []
    message = await store.find(dispatch_id="d1")
    assert message is not None
    assert message.outcome == Outcome.BOUNCED
    assert [e.label for e in message.timeline] == ["bounced", "sms: succeeded"]


async def test_purge_removes_old_settled_messages_in_batches(store: Store) -> None:
    old = NOW - timedelta(days=40)
    await store.apply([postback(f"old{i}", "delivered", old) for i in range(5)], old)
    await store.apply([postback("pending", "sent", old)], old)
    await store.apply([postback("new", "delivered", NOW)], NOW)
    cut = NOW - timedelta(days=30)
    assert await store.purge(cut, 3) == 3
    assert await store.purge(cut, 3) == 2
    assert await store.purge(cut, 3) == 0
    counts = await store.counts()
    assert (counts.messages, counts.events) == (2, 2)
    assert await store.find(dispatch_id="pending") is not None


async def test_migrations_run_once_when_processes_start_together(database_url: str) -> None:
    stores = await asyncio.gather(*(open_store(database_url, TIMEOUTS) for _ in range(4)))
    await stores[0].apply([postback("d1", "sent", NOW)], NOW)
    for opened in stores:
        assert (await opened.counts()).messages == 1
        await opened.close()
    reopened = await open_store(database_url, TIMEOUTS)
    assert (await reopened.counts()).messages == 1
    await reopened.close()


def _braze(raw: dict[str, Any]) -> TrackedEvent:
    return postback(raw["dispatch_id"], raw["status"], NOW, **raw["metadata"])


@pytest.mark.parametrize("sent_at", ["9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+14:00"])
async def test_a_sent_at_at_the_end_of_the_calendar_is_kept_and_arms_from_arrival(
    store: Store, sent_at: str
) -> None:
    await store.apply([postback("d1", "sent", NOW, sent_at=sent_at)], NOW)
    message = await store.find(dispatch_id="d1")
    assert message is not None
    assert message.statuses["sent"].timestamps["sent_at"] == sent_at
    assert message.deadline == NOW + timedelta(minutes=10)


async def test_a_delivery_timeout_longer_than_the_calendar_never_falls_due(store: Store) -> None:
    register = registration(NOW, external_send_id="order-9", delivery_timeout="3000000d")
    await store.apply([register, postback("d9", "sent", NOW, external_send_id="order-9")], NOW)
    message = await store.find(external_send_id="order-9")
    assert message is not None
    assert message.deadline is None
    assert await store.claim_due(NOW + timedelta(days=365 * 1000), 10) == []


async def someone_waits_on(holder: asyncpg.Connection) -> bool:
    """Whether a session waits for a lock ``holder`` holds: blocked by that connection,
    not by another test's on the same server."""
    waiting: int = await holder.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        holder.get_server_pid(),
    )
    return waiting > 0


async def test_an_event_for_a_message_purged_meanwhile_makes_it_anew(
    postgres_schema_url: str,
) -> None:
    # The purge deletes a message while a worker waits for its row lock to apply a late
    # event: the worker must not write into the void and ack an event no message has.
    store = await open_store(postgres_schema_url, TIMEOUTS)
    purger = await asyncpg.connect(postgres_schema_url)
    try:
        await store.apply([postback("d1", "sent", NOW)], NOW)
        purge = purger.transaction()
        await purge.start()
        await purger.execute("SELECT 1 FROM messages WHERE message_key = 'dispatch:d1' FOR UPDATE")
        late = asyncio.create_task(store.apply([postback("d1", "bounced", NOW)], NOW))

        await wait_until(
            lambda: someone_waits_on(purger), what="the worker waiting for the row lock"
        )
        await purger.execute("DELETE FROM events WHERE message_key = 'dispatch:d1'")
        await purger.execute("DELETE FROM messages WHERE message_key = 'dispatch:d1'")
        await purge.commit()
        decided = await late
        message = await store.find(dispatch_id="d1")
    finally:
        await purger.close()
        await store.close()
    assert message is not None
    assert message.outcome == Outcome.BOUNCED
    assert [e.label for e in message.timeline] == ["bounced"]
    assert [p.request.trigger for p in decided] == [Trigger.BOUNCED]


async def test_a_received_at_header_without_a_utc_time_is_not_a_poison(store: Store) -> None:
    # Direct publishers set their own headers; this one has no UTC time (year 0).
    raw = {"dispatch_id": "d1", "status": "delivered", "metadata": {}}
    headers = {"received_at": "0001-01-01T00:00:00+14:00"}
    event = decode(POSTBACK_TYPE, json.dumps(raw).encode(), received_at(headers, None, NOW))
    await store.apply([event], NOW)
    message = await store.find(dispatch_id="d1")
    assert message is not None
    assert message.outcome == Outcome.DELIVERED
    assert [e.received_at for e in message.timeline] == [NOW]


async def test_worker_progress_is_one_row_per_worker_and_old_rows_are_forgotten(
    store: Store,
) -> None:
    old = WorkerProgress("gone", NOW - timedelta(hours=2), NOW, NOW, NOW, None)
    assert await store.report_progress(old, NOW - timedelta(days=1)) == [old]
    first = WorkerProgress("w1", NOW, None, None, None, None)
    await store.report_progress(first, NOW - timedelta(days=1))
    later = NOW + timedelta(seconds=1)
    again = WorkerProgress(
        "w1", later, later, NOW - timedelta(minutes=1), NOW, NOW - timedelta(minutes=2)
    )
    rows = await store.report_progress(again, NOW - timedelta(hours=1))
    assert rows == [again]


async def test_two_workers_making_one_new_message_at_once_both_count(
    postgres_schema_url: str,
) -> None:
    # Neither finds a row: each must wait for the other's, not write over it.
    workers = [await open_store(postgres_schema_url, TIMEOUTS) for _ in range(2)]
    try:
        for i in range(20):
            await asyncio.gather(
                workers[0].apply([postback(f"d{i}", "sent", NOW)], NOW),
                workers[1].apply([postback(f"d{i}", "bounced", NOW)], NOW),
            )
        for i in range(20):
            message = await workers[0].find(dispatch_id=f"d{i}")
            assert message is not None
            assert set(message.statuses) == {"sent", "bounced"}
    finally:
        for worker in workers:
            await worker.close()


async def test_marking_published_locks_in_key_order_so_a_batch_never_deadlocks_with_it(
    postgres_schema_url: str,
) -> None:
    # A batch locks its messages in key order. Marking decisions published must too: had
    # it taken "b" (stored first, met first by a scan) and then waited for "a", a batch
    # holding "a" and asking for "b" would deadlock, which PostgreSQL breaks after a
    # second by failing one of them.
    store = await open_store(postgres_schema_url, TIMEOUTS)
    batch = await asyncpg.connect(postgres_schema_url)
    try:
        for dispatch_id in ("b", "a"):
            await store.apply([postback(dispatch_id, "bounced", NOW, reason="550")], NOW)
        await batch.execute("SET lock_timeout = '500ms'")  # before the deadlock check
        transaction = batch.transaction()
        await transaction.start()
        lock = "SELECT 1 FROM messages WHERE message_key = $1 FOR UPDATE"
        await batch.execute(lock, "dispatch:a")
        later = NOW + timedelta(minutes=1)
        marking = asyncio.ensure_future(store.mark_published(["dispatch:a", "dispatch:b"], later))
        await wait_until(
            lambda: someone_waits_on(batch), what="marking published waiting for the batch's lock"
        )
        await batch.execute(lock, "dispatch:b")  # raises LockNotAvailableError if held
        await transaction.commit()
        await asyncio.wait_for(marking, 10)
        for dispatch_id in ("a", "b"):
            message = await store.find(dispatch_id=dispatch_id)
            assert message is not None
            assert message.decision is not None
            assert message.decision.published_at == later
    finally:
        await batch.close()
        await store.close()

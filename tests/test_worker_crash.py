"""A worker killed with SIGKILL mid-stream and started again loses and duplicates nothing."""

import signal
from datetime import timedelta
from pathlib import Path

from tests.support.factories import outgoing_postback, raw_postback
from tests.support.harness import body, publisher, queue_readers
from tests.support.processes import start_worker, worker_process
from tests.support.waiting import wait_until
from txmail.core.broker import Outgoing
from txmail.core.events import utc_now
from txmail.core.settings import Settings
from txmail.workers.state import Outcome
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import DeliveryTimeouts

MESSAGES = 600  # a third delivered, a third bounced, a third already late


def _stream() -> tuple[list[list[Outgoing]], set[str], dict[str, Outcome]]:
    """Chunks to publish, the dispatch ids that must get a decision, every final outcome."""
    now = utc_now()
    late = (now - timedelta(hours=2)).isoformat()
    chunks: list[list[Outgoing]] = []
    decided, outcomes = set(), {}
    for i in range(MESSAGES):
        dispatch_id = f"crash-{i}"
        if i % 100 == 0:
            chunks.append([])
        kind = i % 3
        sent_at = late if kind == 2 else now.isoformat()
        chunks[-1].append(
            outgoing_postback(raw_postback(dispatch_id, "sent", sent_at=sent_at), now)
        )
        if kind == 0:
            chunks[-1].append(outgoing_postback(raw_postback(dispatch_id, "delivered"), now))
            outcomes[dispatch_id] = Outcome.DELIVERED
        elif kind == 1:
            bounced = raw_postback(dispatch_id, "bounced", reason="550 5.1.1 no such user")
            chunks[-1].append(outgoing_postback(bounced, now))
            decided.add(dispatch_id)
            outcomes[dispatch_id] = Outcome.BOUNCED
        else:
            decided.add(dispatch_id)
            outcomes[dispatch_id] = Outcome.TIMED_OUT
    return chunks, decided, outcomes


async def _settled(store: Store, events: int, decisions: int) -> bool:
    counts = await store.counts()
    return (counts.events, counts.decisions, counts.unpublished) == (events, decisions, 0)


async def test_sigkill_mid_stream_then_restart(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    worker_settings = settings.model_copy(
        update={
            "database_url": database_url,
            "delivery_timeout": timedelta(hours=1),
            "sweep_interval": timedelta(milliseconds=100),
            "batch_size": 50,
            "republish_after": timedelta(seconds=2),
        }
    )
    chunks, decided, outcomes = _stream()
    total_events = sum(len(chunk) for chunk in chunks)
    log = tmp_path / "worker.log"
    store = await open_store(database_url, DeliveryTimeouts(timedelta(hours=1)))
    try:
        async with publisher(worker_settings) as broker:
            first = start_worker(worker_settings, log)
            for chunk in chunks[:3]:
                await broker.publish(chunk)
            await wait_until(
                lambda: _some_applied(store), timeout=20, what="the first worker to apply some"
            )
            first.send_signal(signal.SIGKILL)
            first.wait()
            for chunk in chunks[3:]:
                await broker.publish(chunk)
            with worker_process(worker_settings, log):
                await broker.publish(chunks[0])  # a replay on top of the redeliveries
                await wait_until(
                    lambda: _settled(store, total_events, len(decided)),
                    timeout=30,
                    what="every event applied and every decision published",
                )
        async with queue_readers(worker_settings) as (fallback, _):
            requests = [body(m)["dispatch_id"] for m in await fallback.take_all()]
        # A request confirmed but not yet marked when the worker died is published again
        # under the same idempotency key; the decision itself is never made twice.
        assert set(requests) == decided
        for dispatch_id, expected in outcomes.items():
            message = await store.find(dispatch_id=dispatch_id)
            assert message is not None
            assert message.outcome == expected, dispatch_id
    finally:
        await store.close()


async def _some_applied(store: Store) -> bool:
    return (await store.counts()).events > 0

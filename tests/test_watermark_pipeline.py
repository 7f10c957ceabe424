"""The watermark through the real pipeline: ingress, RabbitMQ, worker(s), both stores.

Braze's postbacks reach the ingress LAG after Braze stamped them, as if they had waited
in front of it, in Braze's order. Every deadline has passed on the wall clock before
its `sent` even arrives; only a `delivered` that never comes may time out.
"""

import asyncio
import signal
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

from tests.support.factories import outgoing_postback, raw_postback
from tests.support.harness import body, publisher, queue_readers, running_worker
from tests.support.ingress_server import running_ingress
from tests.support.processes import start_worker
from tests.support.waiting import wait_until
from txmail.core.events import utc_now
from txmail.core.settings import Settings
from txmail.workers.state import Outcome
from txmail.workers.store.protocol import Store

LAG = timedelta(seconds=5)
TIMEOUT = timedelta(seconds=1)
DELIVERED_AFTER = timedelta(milliseconds=500)  # in time: half the timeout
STREAM_FOR = timedelta(seconds=2.5)  # long enough for Braze's clock to pass the deadline


def _settings(settings: Settings, database_url: str) -> Settings:
    return settings.model_copy(
        update={
            "database_url": database_url,
            "delivery_timeout": TIMEOUT,
            "sweep_interval": timedelta(milliseconds=50),
            "watermark_skew": timedelta(milliseconds=300),
            # Far beyond the test: only the flowing stream may fire the timeout.
            "max_lateness": timedelta(seconds=30),
        }
    )


def _postback(dispatch_id: str, status: str, at: datetime) -> dict[str, object]:
    return {
        "dispatch_id": dispatch_id,
        "status": status,
        "metadata": {f"{status}_at": at.isoformat()},
    }


async def _lagging_stream_times_out_only_the_undelivered(settings: Settings, workers: int) -> None:
    async with AsyncExitStack() as stack:
        stores: list[Store] = [
            await stack.enter_async_context(running_worker(settings)) for _ in range(workers)
        ]
        store = stores[0]
        ingress = await stack.enter_async_context(running_ingress(settings))

        async def post(raw: dict[str, object]) -> None:
            assert (await ingress.post("/postbacks", json=raw)).status == 202

        start = utc_now()
        await post(_postback("never", "sent", start - LAG))
        to_deliver: list[tuple[str, datetime]] = []
        sent = 0
        while (now := utc_now()) < start + STREAM_FOR:
            braze_now = now - LAG
            while to_deliver and to_deliver[0][1] <= braze_now:
                dispatch_id, delivered_at = to_deliver.pop(0)
                await post(_postback(dispatch_id, "delivered", delivered_at))
            await post(_postback(f"m{sent}", "sent", braze_now))
            to_deliver.append((f"m{sent}", braze_now + DELIVERED_AFTER))
            sent += 1
            await asyncio.sleep(0.02)  # pacing the stream, not waiting for a result
        for dispatch_id, delivered_at in to_deliver:
            await post(_postback(dispatch_id, "delivered", delivered_at))

        async def settled() -> bool:
            never = await store.find(dispatch_id="never")
            if never is None or never.decision is None or never.decision.published_at is None:
                return False
            counts = await store.counts()
            return counts.messages == sent + 1 and counts.pending_deadlines == 0

        await wait_until(settled, timeout=20, what="every message settled")
        outcomes = [
            message.outcome
            for n in range(sent)
            if (message := await store.find(dispatch_id=f"m{n}")) is not None
        ]
        assert outcomes == [Outcome.DELIVERED] * sent
        assert (await store.counts()).decisions == 1
        async with queue_readers(settings) as (fallback, _):
            [request] = await fallback.take_all()
    assert sent > 20
    assert (body(request)["dispatch_id"], body(request)["trigger"]) == ("never", "timeout")


async def test_postbacks_late_at_the_ingress_make_no_false_timeout(
    settings: Settings, database_url: str
) -> None:
    await _lagging_stream_times_out_only_the_undelivered(_settings(settings, database_url), 1)


async def test_two_workers_on_postgres_agree_on_the_watermark(
    settings: Settings, postgres_schema_url: str
) -> None:
    await _lagging_stream_times_out_only_the_undelivered(
        _settings(settings, postgres_schema_url), 2
    )


async def test_a_killed_worker_holds_deadlines_back_only_until_its_row_is_stale(
    settings: Settings, postgres_schema_url: str, tmp_path: Path
) -> None:
    quick = settings.model_copy(
        update={
            "database_url": postgres_schema_url,
            "delivery_timeout": TIMEOUT,
            "sweep_interval": timedelta(milliseconds=50),
            "watermark_skew": timedelta(milliseconds=100),
            "max_lateness": timedelta(milliseconds=300),
        }
    )
    doomed = start_worker(quick, tmp_path / "worker.log")
    database = await asyncpg.connect(postgres_schema_url)
    try:

        async def reported() -> bool:
            try:
                return bool(await database.fetchval("SELECT count(*) FROM worker_progress"))
            except asyncpg.UndefinedTableError:
                return False  # not migrated yet

        await wait_until(reported, timeout=20, what="the first worker to report its progress")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        async with running_worker(quick) as store, publisher(quick) as broker:
            sent_at = utc_now()
            sent = raw_postback("orphan", "sent", sent_at=sent_at.isoformat())
            await broker.publish([outgoing_postback(sent, sent_at)])

            async def published() -> bool:
                message = await store.find(dispatch_id="orphan")
                return bool(message and message.decision and message.decision.published_at)

            # The dead worker's row says it applied nothing after its death, which is
            # before this deadline: fired only once that row is taken for stale.
            await wait_until(published, timeout=15, what="the timeout despite the dead worker")
            assert (await store.counts()).decisions == 1
    finally:
        await database.close()
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()

"""The broker connection drops under a running worker: it consumes again by itself,
says it is not ready meanwhile, and times out nothing that was delivered."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from tests.support.ingress_server import running_ingress
from tests.support.readiness import is_not_consuming, is_ready, proxied
from tests.support.waiting import wait_until
from txmail.core.broker import Broker
from txmail.core.command import Configuration
from txmail.core.events import utc_now
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.state import Outcome
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.sweeper import Sweeper
from txmail.workers.timeouts import DeliveryTimeouts, delivery_timeouts
from txmail.workers.tracker import Tracker
from txmail.workers.watermark import WatermarkRule
from txmail.workers.worker import Worker

SEND = {
    "external_send_id": "order-77",
    "recipient": {"email": "ada@example.com"},
    "delivery_timeout": "2s",
}


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[tuple[Worker, Store]]:
    config = Configuration(settings, rules_file=None)
    store = await open_store(settings.database_url, delivery_timeouts(config))
    worker = Worker(config, store)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker, store
    finally:
        stop.set()
        await task
        await store.close()


@asynccontextmanager
async def tracker_cut_off_alone(
    settings: Settings, tracker_url: str
) -> AsyncIterator[tuple[Tracker, Store]]:
    """A tracker consuming through ``tracker_url`` and a sweeper publishing directly."""
    store = await open_store(settings.database_url, DeliveryTimeouts(settings.delivery_timeout))
    broker = Broker(settings.amqp_url, Topology(settings.namespace), settings.publish_timeout)
    broker.start()
    tracker = Tracker(
        tracker_url, Topology(settings.namespace), store, broker, settings.batch_size, 0.005
    )
    watermark = WatermarkRule(
        settings.watermark_skew, settings.max_lateness, settings.sweep_interval
    )
    sweeper = Sweeper(
        store, broker, settings.sweep_interval, settings.retention, tracker, watermark
    )
    stop = asyncio.Event()
    running = asyncio.gather(tracker.run(stop), sweeper.run(stop))
    try:
        yield tracker, store
    finally:
        stop.set()
        await running
        await broker.close()
        await store.close()


async def _cut_off(worker: Worker) -> bool:
    problems = await worker.not_ready()
    return await is_not_consuming(worker) and (
        "not connected to RabbitMQ for publishing" in problems
    )


async def _outcome(store: Store, dispatch_id: str) -> Outcome | None:
    message = await store.find(dispatch_id=dispatch_id)
    return message.outcome if message else None


def _outcome_is(store: Store, dispatch_id: str, outcome: Outcome) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _outcome(store, dispatch_id) == outcome

    return check


async def test_a_delivered_posted_while_the_tracker_is_cut_off_is_not_timed_out(
    settings: Settings, tmp_path: Path
) -> None:
    """The issue's scenario: the tracker's connection is gone while the worker can still
    publish, and the deadline passes with the `delivered` waiting in the queue."""
    base = settings.model_copy(
        update={
            "database_url": f"sqlite:///{tmp_path / 'txmail.db'}",
            "sweep_interval": timedelta(milliseconds=100),
        }
    )
    async with (
        proxied(base) as (proxy, cut_off),
        running_ingress(base) as client,
        tracker_cut_off_alone(base, cut_off.amqp_url) as (tracker, store),
    ):
        await wait_until(lambda: tracker.is_consuming, what="the tracker to consume")
        assert (await client.post("/v1/sends", json=SEND)).status == 202
        sent = {
            "dispatch_id": "d-77",
            "status": "sent",
            "metadata": {"external_send_id": "order-77"},
        }
        assert (await client.post("/postbacks", json=sent)).status == 202
        await wait_until(_outcome_is(store, "d-77", Outcome.IN_FLIGHT), what="`sent` applied")
        deadline = utc_now() + timedelta(seconds=2)

        await proxy.cut()
        await wait_until(lambda: not tracker.is_consuming, what="the tracker to notice")
        delivered = {**sent, "status": "delivered"}
        assert (await client.post("/postbacks", json=delivered)).status == 202
        # Proving a negative takes time: the deadline passes while the `delivered` waits
        # in the queue, and the sweeper must not take the tracker for caught up.
        await wait_until(
            lambda: utc_now() > deadline + timedelta(seconds=1), what="the deadline to pass"
        )
        assert await _outcome(store, "d-77") == Outcome.IN_FLIGHT

        await proxy.start()
        await wait_until(_outcome_is(store, "d-77", Outcome.DELIVERED), what="`delivered`")
        message = await store.find(dispatch_id="d-77")
        assert message is not None
        assert message.decision is None


async def test_the_worker_consumes_again_after_its_connections_drop(
    settings: Settings, tmp_path: Path
) -> None:
    base = settings.model_copy(
        update={
            "database_url": f"sqlite:///{tmp_path / 'txmail.db'}",
            "sweep_interval": timedelta(milliseconds=100),
        }
    )
    async with (
        proxied(base) as (proxy, cut_off),
        running_ingress(base) as client,
        running_worker(cut_off) as (worker, store),
    ):
        await wait_until(lambda: is_ready(worker), what="the worker to be ready")
        await proxy.cut()
        await wait_until(lambda: _cut_off(worker), what="the worker to say it is cut off")
        await proxy.start()
        for round_ in range(2):
            await wait_until(lambda: is_ready(worker), timeout=20, what="the worker to be back")
            postback = {"dispatch_id": f"again-{round_}", "status": "delivered"}
            assert (await client.post("/postbacks", json=postback)).status == 202
            await wait_until(
                _outcome_is(store, postback["dispatch_id"], Outcome.DELIVERED),
                what="the postback applied after the drop",
            )
            proxy.drop_connections()  # a broker restart: it listens again at once

"""The worker process: a tracker and a sweeper sharing one store and one broker."""

import asyncio

import structlog

from txmail.broker import Broker
from txmail.settings import Settings
from txmail.stopping import pause, stop_on_signals
from txmail.topology import Topology
from workers.store import open_store
from workers.store.protocol import Store, StoreUnavailable
from workers.sweeper import Sweeper
from workers.timeouts import DeliveryTimeouts, load_timeouts
from workers.tracker import Tracker
from workers.watermark import WatermarkRule

log = structlog.get_logger(__name__)

STORE_RETRY_INTERVAL = 1.0
BROKER_WAIT_INTERVAL = 0.05


def timeouts_from(settings: Settings) -> DeliveryTimeouts:
    """Raises ConfigError when the rules file is unusable."""
    return load_timeouts(settings.delivery_timeout, settings.rules)


async def open_store_when_available(
    settings: Settings, timeouts: DeliveryTimeouts, stop: asyncio.Event, *, read_only: bool = False
) -> Store | None:
    """Open the store (see ``open_store``), waiting for the database to come up; None
    when stopped first."""
    while not stop.is_set():
        try:
            return await open_store(
                settings.database_url, timeouts, settings.republish_after, read_only=read_only
            )
        except StoreUnavailable as error:
            log.warning("store unavailable, retrying", error=str(error))
        await pause(stop, STORE_RETRY_INTERVAL)
    return None


async def run_worker(settings: Settings, store: Store, stop: asyncio.Event) -> None:
    topology = Topology(settings.namespace)
    broker = Broker(settings.amqp_url, topology, settings.publish_timeout)
    broker.start()
    tracker = Tracker(
        settings.amqp_url,
        topology,
        store,
        broker,
        settings.batch_size,
        settings.batch_wait.total_seconds(),
    )
    watermark = WatermarkRule(
        settings.watermark_skew, settings.max_lateness, settings.sweep_interval
    )
    sweeper = Sweeper(
        store, broker, settings.sweep_interval, settings.retention, tracker, watermark
    )
    try:
        # Deciding while unable to publish would only postpone each publish by a retry.
        while not broker.is_ready and not stop.is_set():
            await pause(stop, BROKER_WAIT_INTERVAL)
        await asyncio.gather(tracker.run(stop), sweeper.run(stop))
    finally:
        await broker.close()


async def serve_worker(settings: Settings) -> None:
    """``txmail worker``: run until SIGTERM."""
    stop = stop_on_signals()
    store = await open_store_when_available(settings, timeouts_from(settings), stop)
    if store is None:
        return
    try:
        await run_worker(settings, store, stop)
    finally:
        await store.close()
    log.info("worker stopped")

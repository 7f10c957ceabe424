"""The worker process: a tracker, a sweeper and a health monitor sharing one store and
one broker."""

import asyncio

import structlog

from txmail.core.backoff import until_up
from txmail.core.broker import Broker
from txmail.core.command import Configuration
from txmail.core.health import create_health_app
from txmail.core.http import serving
from txmail.core.metrics import exposed
from txmail.core.settings import Settings
from txmail.core.stopping import pause, stop_on_signals, unless_stopped
from txmail.core.topology import Topology
from txmail.workers import metrics
from txmail.workers.health.monitor import HealthMonitor, health_rules
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store, StoreUnavailable
from txmail.workers.sweeper import Sweeper
from txmail.workers.timeouts import DeliveryTimeouts, delivery_timeouts
from txmail.workers.tracker import Tracker
from txmail.workers.watermark import WatermarkRule

log = structlog.get_logger(__name__)

BROKER_WAIT_INTERVAL = 0.05


async def open_store_when_available(
    settings: Settings, timeouts: DeliveryTimeouts, stop: asyncio.Event, *, read_only: bool = False
) -> Store | None:
    """Open the store, waiting (with backoff) for the database to come up; None when
    stopped first."""

    async def opening() -> Store:
        return await open_store(
            settings.database_url, timeouts, settings.republish_after, read_only=read_only
        )

    return await unless_stopped(until_up(opening, "store", (StoreUnavailable,)), stop)


class Worker:
    def __init__(self, config: Configuration, store: Store) -> None:
        settings = config.settings
        topology = Topology(settings.namespace)
        self._store = store
        self._broker = Broker(settings.amqp_url, topology, settings.publish_timeout)
        self._monitor = HealthMonitor(
            store.health, self._broker, health_rules(config), settings.republish_after
        )
        self._tracker = Tracker(
            settings.amqp_url,
            topology,
            store,
            self._broker,
            settings.batch_size,
            settings.batch_wait.total_seconds(),
        )
        watermark = WatermarkRule(
            settings.watermark_skew, settings.max_lateness, settings.sweep_interval
        )
        self._sweeper = Sweeper(
            store,
            self._broker,
            settings.sweep_interval,
            settings.retention,
            self._tracker,
            watermark,
        )
        self._tracker_queue = topology.tracker_queue

    async def not_ready(self) -> list[str]:
        """What keeps this worker from doing its job; empty when nothing does."""
        problems = []
        if not self._broker.is_ready:
            problems.append("not connected to RabbitMQ for publishing")
        if not self._tracker.is_consuming:
            problems.append(f"not consuming {self._tracker_queue}")
        try:
            await self._store.ping()
        except StoreUnavailable as error:
            problems.append(f"store unavailable: {error}")
        return problems

    async def run(self, stop: asyncio.Event) -> None:
        """Track, sweep and judge Braze's health until ``stop`` is set."""
        self._broker.start()
        try:
            # Deciding while unable to publish would only postpone each publish by a retry.
            while not self._broker.is_ready and not stop.is_set():
                await pause(stop, BROKER_WAIT_INTERVAL)
            # The learned timeouts before the first deadline is armed: a restart keeps them.
            learned = until_up(self._store.health.refresh_learned, "store", (StoreUnavailable,))
            await unless_stopped(learned, stop)
            await asyncio.gather(
                self._tracker.run(stop), self._sweeper.run(stop), self._monitor.run(stop)
            )
        finally:
            await self._broker.close()


async def run_worker(config: Configuration, store: Store, stop: asyncio.Event) -> None:
    await Worker(config, store).run(stop)


async def serve_worker(config: Configuration) -> None:
    """``txmail worker``: run until SIGTERM, with /healthz, /readyz and /metrics on the metrics port
    from the start (a port in use ends the process before it waits for anything)."""
    settings = config.settings
    stop = stop_on_signals()
    timeouts = delivery_timeouts(config)
    worker: Worker | None = None

    async def not_ready() -> list[str]:
        return ["store not open yet"] if worker is None else await worker.not_ready()

    async with serving(
        create_health_app(not_ready, exposed(metrics.REGISTRY)),
        settings.http_host,
        settings.metrics_port,
        settings,
    ):
        store = await open_store_when_available(settings, timeouts, stop)
        if store is None:
            return
        try:
            worker = Worker(config, store)
            await worker.run(stop)
        finally:
            await store.close()
    log.info("worker stopped")

"""``txmail run``: every part in one process, on SQLite by default — txmail on a laptop.

Ingress and API on their ports, the worker, and the fallback executor when a rules file
is configured. The parts talk through RabbitMQ exactly as separate processes would; the
API's ``/readyz`` answers for all of them, and ``/metrics`` (on both ports) serves every
part's metrics.
"""

from contextlib import AsyncExitStack

import structlog

from txmail.core.command import Configuration
from txmail.core.http import serving
from txmail.core.metrics import exposed
from txmail.core.stopping import stop_on_signals
from txmail.fallback import metrics as fallback_metrics
from txmail.fallback.configured import FallbackRules
from txmail.fallback.executor.service import FallbackExecutor, running_executor
from txmail.fallback.parking.operations import BrokerParkedFallbacks
from txmail.ingress import metrics as ingress_metrics
from txmail.ingress.app import create_app
from txmail.workers import metrics as worker_metrics
from txmail.workers.api import api_host, api_tokens, create_api_app
from txmail.workers.timeouts import delivery_timeouts
from txmail.workers.worker import Worker, open_store_when_available

log = structlog.get_logger(__name__)


async def run_all(config: Configuration, rules: FallbackRules | None) -> None:
    """Until SIGTERM; ``rules``, the executor's, are None when TXMAIL_RULES is not set."""
    settings = config.settings
    stop = stop_on_signals()
    timeouts = delivery_timeouts(config)
    executors: list[FallbackExecutor] = []  # the executor, once connected
    everything = exposed(
        ingress_metrics.REGISTRY, worker_metrics.REGISTRY, fallback_metrics.REGISTRY
    )

    async def executor_not_ready() -> list[str]:
        if rules is None or executors:
            return [p for executor in executors for p in await executor.not_ready()]
        return ["fallback executor not connected to RabbitMQ yet"]

    async with AsyncExitStack() as running:
        # Listening first: a port in use ends the process before it waits for anything.
        await running.enter_async_context(
            serving(
                create_app(settings, everything), settings.http_host, settings.http_port, settings
            )
        )
        store = await open_store_when_available(settings, timeouts, stop)
        if store is None:
            return
        running.push_async_callback(store.close)
        worker = Worker(config, store)
        api = create_api_app(
            store,
            api_tokens(settings),
            worker.not_ready,
            executor_not_ready,
            metrics_served=everything,
            parked=BrokerParkedFallbacks(settings),
        )
        await running.enter_async_context(
            serving(api, api_host(settings), settings.api_port, settings)
        )
        if rules is None:
            log.warning("TXMAIL_RULES is not set: fallbacks are decided and queued, but none runs")
        else:
            executor = await running.enter_async_context(running_executor(settings, rules, stop))
            if executor is None:  # stopped while waiting for the broker
                return
            executors.append(executor)
        log.info("running", ingress_port=settings.http_port, api_port=settings.api_port)
        await worker.run(stop)
        log.info("stopping")

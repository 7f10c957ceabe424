"""``txmail run``: every part in one process, on SQLite by default — txmail on a laptop.

Ingress and API on their ports, the worker, and the fallback executor when a rules file
is configured. The parts talk through RabbitMQ exactly as separate processes would; the
API's ``/readyz`` answers for all of them.
"""

from contextlib import AsyncExitStack

import structlog

from txmail.core.settings import Settings

log = structlog.get_logger(__name__)


async def run_all(settings: Settings) -> None:
    from txmail.core.http import serving
    from txmail.core.stopping import stop_on_signals
    from txmail.fallback.executor import FallbackExecutor, running_executor
    from txmail.fallback.rules_file import load_configured_rules
    from txmail.ingress.app import create_app
    from txmail.workers.api import api_host, api_tokens, create_api_app
    from txmail.workers.health.store import open_health_store
    from txmail.workers.worker import Worker, open_store_when_available, timeouts_from

    rules_file = load_configured_rules(settings)
    stop = stop_on_signals()
    timeouts = timeouts_from(settings)
    executors: list[FallbackExecutor] = []  # the executor, once connected

    async def executor_not_ready() -> list[str]:
        if rules_file is None or executors:
            return [p for executor in executors for p in await executor.not_ready()]
        return ["fallback executor not connected to RabbitMQ yet"]

    async with AsyncExitStack() as running:
        # Listening first: a port in use ends the process before it waits for anything.
        await running.enter_async_context(
            serving(create_app(settings), settings.http_host, settings.http_port, settings)
        )
        store = await open_store_when_available(settings, timeouts, stop)
        if store is None:
            return
        running.push_async_callback(store.close)
        worker = Worker(settings, store, timeouts)
        health = open_health_store(settings.database_url)
        running.push_async_callback(health.close)
        api = create_api_app(
            store, api_tokens(settings), worker.not_ready, executor_not_ready, health=health
        )
        await running.enter_async_context(
            serving(api, api_host(settings), settings.api_port, settings)
        )
        if rules_file is None:
            log.warning("TXMAIL_RULES is not set: fallbacks are decided and queued, but none runs")
        else:
            executor = await running.enter_async_context(
                running_executor(settings, rules_file, stop)
            )
            if executor is None:  # stopped while waiting for the broker
                return
            executors.append(executor)
        log.info("running", ingress_port=settings.http_port, api_port=settings.api_port)
        await worker.run(stop)
        log.info("stopping")

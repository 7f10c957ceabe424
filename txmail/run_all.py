"""``txmail run``: every part in one process, on SQLite by default — txmail on a laptop.

Ingress and API on their ports, the worker, and the fallback executor when a rules file
is configured. The parts talk through RabbitMQ exactly as separate processes would.
"""

from contextlib import AsyncExitStack

import structlog
from aiohttp import web

from txmail.settings import Settings

log = structlog.get_logger(__name__)


async def run_all(settings: Settings) -> None:
    from fallback.executor import running_executor
    from fallback.rules_file import load_configured_rules
    from ingress.app import create_app
    from txmail.http import app_runner
    from txmail.stopping import stop_on_signals
    from workers.api import api_host, api_tokens, create_api_app
    from workers.worker import open_store_when_available, run_worker, timeouts_from

    rules_file = load_configured_rules(settings)
    stop = stop_on_signals()
    store = await open_store_when_available(settings, timeouts_from(settings), stop)
    if store is None:
        return
    async with AsyncExitStack() as running:
        running.push_async_callback(store.close)
        apps = (
            (create_app(settings), settings.http_host, settings.http_port),
            (create_api_app(store, api_tokens(settings)), api_host(settings), settings.api_port),
        )
        for app, host, port in apps:
            runner = app_runner(app, settings)
            await runner.setup()
            running.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, host, port).start()
        if rules_file is None:
            log.warning("TXMAIL_RULES is not set: fallbacks are decided and queued, but none runs")
        else:
            await running.enter_async_context(running_executor(settings, rules_file, stop))
        log.info("running", ingress_port=settings.http_port, api_port=settings.api_port)
        await run_worker(settings, store, stop)
        log.info("stopping")

"""The workers' subcommands of ``txmail``: worker, api, status."""

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from txmail.core import event_loop
from txmail.core.command import Configuration, Subcommands
from txmail.core.http import serve_until_stopped
from txmail.core.parked import ParkedFallbacks
from txmail.core.settings import Settings
from txmail.core.stopping import stop_on_signals
from txmail.workers.api import api_host, api_tokens, create_api_app
from txmail.workers.health.show import describe_health
from txmail.workers.status import as_json, describe, find_either, terminal_safe_json
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store, StoreUnavailable
from txmail.workers.timeouts import delivery_timeouts
from txmail.workers.worker import open_store_when_available, serve_worker

T = TypeVar("T")


def worker_command(config: Configuration, args: argparse.Namespace) -> int:
    event_loop.run(serve_worker(config))
    return 0


async def _serve_api(config: Configuration, parked: ParkedFallbacks) -> None:
    settings = config.settings
    host = api_host(settings)  # says at once when no token guards the API
    stop = stop_on_signals()
    # Reads only: a read-only database user is enough, and the tables are the workers'.
    store = await open_store_when_available(
        settings, delivery_timeouts(config), stop, read_only=True
    )
    if store is None:
        return
    try:
        await serve_until_stopped(
            create_api_app(store, api_tokens(settings), parked=parked),
            host,
            settings.api_port,
            settings,
            stop,
        )
    finally:
        await store.close()


def api_command(config: Configuration, args: argparse.Namespace) -> int:
    event_loop.run(_serve_api(config, args.parked_fallbacks(config.settings)))
    return 0


async def _read(config: Configuration, read: Callable[[Store], Awaitable[T]]) -> T:
    store = await open_store(
        config.settings.database_url, delivery_timeouts(config), read_only=True
    )
    try:
        return await read(store)
    finally:
        await store.close()


def _health_status(config: Configuration, as_json: bool) -> int:
    try:
        report = asyncio.run(_read(config, lambda store: store.health.report()))
    except StoreUnavailable as error:
        print(f"txmail: cannot read the store: {error}", file=sys.stderr)
        return 2
    print(
        terminal_safe_json(report.model_dump_json(indent=2)) if as_json else describe_health(report)
    )
    return 0


def status_command(config: Configuration, args: argparse.Namespace) -> int:
    if args.health == (args.id is not None):
        print("txmail: status takes a message id, or --health", file=sys.stderr)
        return 2
    if args.health:
        return _health_status(config, args.json)
    try:
        message = asyncio.run(_read(config, lambda store: find_either(store, args.id)))
    except StoreUnavailable as error:
        print(f"txmail: cannot read the store: {error}", file=sys.stderr)
        return 2
    if message is None:
        print(
            f"txmail: nothing is known about {args.id!r} (neither a dispatch id "
            "nor an external send id seen by the workers)",
            file=sys.stderr,
        )
        return 1
    print(as_json(message) if args.json else describe(message))
    return 0


def add_commands(
    commands: Subcommands, parked_fallbacks: Callable[[Settings], ParkedFallbacks]
) -> None:
    """``parked_fallbacks``: how `txmail api` reaches the parked fallback requests (the
    executor's business, so the command hands it in)."""
    worker = commands.add_parser(
        "worker", help="track every message: consume events, keep state, decide fallbacks"
    )
    worker.set_defaults(handler=worker_command)
    api = commands.add_parser("api", help="serve the message state over HTTP (TXMAIL_API_PORT)")
    api.set_defaults(handler=api_command, parked_fallbacks=parked_fallbacks)
    status = commands.add_parser(
        "status", help="show what happened to one message, or Braze's health (--health)"
    )
    status.add_argument("id", nargs="?", help="a Braze dispatch id or your external send id")
    status.add_argument(
        "--health", action="store_true", help="show Braze's health and the learned timeouts"
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(handler=status_command)

"""The workers' subcommands of ``txmail``: worker, api, status."""

import argparse
import asyncio
import sys
from collections.abc import Callable

from txmail.core.errors import ConfigError
from txmail.core.http import serve_until_stopped
from txmail.core.settings import Settings
from txmail.core.stopping import stop_on_signals
from txmail.workers.api import api_host, api_tokens, create_api_app
from txmail.workers.health.show import describe_health
from txmail.workers.health.store import HealthReport, open_health_store
from txmail.workers.status import as_json, describe, terminal_safe_json
from txmail.workers.store import open_store
from txmail.workers.store.protocol import MessageView, StoreUnavailable
from txmail.workers.worker import open_store_when_available, serve_worker, timeouts_from

Command = Callable[[Settings, argparse.Namespace], int]


def _fails_cleanly(command: Command) -> Command:
    """Configuration problems end a command with the message and exit code 2."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        try:
            return command(settings, args)
        except ConfigError as error:
            print(f"txmail: {error}", file=sys.stderr)
            return 2

    return run


@_fails_cleanly
def worker_command(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(serve_worker(settings))
    return 0


async def _serve_api(settings: Settings) -> None:
    host = api_host(settings)  # says at once when no token guards the API
    stop = stop_on_signals()
    # Reads only: a read-only database user is enough, and the tables are the workers'.
    store = await open_store_when_available(settings, timeouts_from(settings), stop, read_only=True)
    if store is None:
        return
    health = open_health_store(settings.database_url, read_only=True)
    try:
        await serve_until_stopped(
            create_api_app(store, api_tokens(settings), health=health),
            host,
            settings.api_port,
            settings,
            stop,
        )
    finally:
        await health.close()
        await store.close()


@_fails_cleanly
def api_command(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_serve_api(settings))
    return 0


async def _lookup(settings: Settings, wanted: str) -> MessageView | None:
    store = await open_store(settings.database_url, timeouts_from(settings), read_only=True)
    try:
        return await store.find(dispatch_id=wanted) or await store.find(external_send_id=wanted)
    finally:
        await store.close()


async def _health_report(settings: Settings) -> HealthReport:
    health = open_health_store(settings.database_url, read_only=True)
    try:
        return await health.report()
    finally:
        await health.close()


def _health_status(settings: Settings, as_json: bool) -> int:
    try:
        report = asyncio.run(_health_report(settings))
    except StoreUnavailable as error:
        print(f"txmail: cannot read the store: {error}", file=sys.stderr)
        return 2
    print(
        terminal_safe_json(report.model_dump_json(indent=2)) if as_json else describe_health(report)
    )
    return 0


@_fails_cleanly
def status_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.health == (args.id is not None):
        print("txmail: status takes a message id, or --health", file=sys.stderr)
        return 2
    if args.health:
        return _health_status(settings, args.json)
    try:
        message = asyncio.run(_lookup(settings, args.id))
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


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    worker = commands.add_parser(
        "worker", help="track every message: consume events, keep state, decide fallbacks"
    )
    worker.set_defaults(handler=worker_command)
    api = commands.add_parser("api", help="serve the message state over HTTP (TXMAIL_API_PORT)")
    api.set_defaults(handler=api_command)
    status = commands.add_parser(
        "status", help="show what happened to one message, or Braze's health (--health)"
    )
    status.add_argument("id", nargs="?", help="a Braze dispatch id or your external send id")
    status.add_argument(
        "--health", action="store_true", help="show Braze's health and the learned timeouts"
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(handler=status_command)

"""The ``txmail`` command: one entry point, one subcommand per process kind or question."""

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

from txmail.cli.command_help import add_epilogs
from txmail.core.errors import CannotStart, ConfigError
from txmail.core.logs import configure_logging
from txmail.core.settings import Settings, load_settings


def run_ingress(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_serve_ingress(settings))
    return 0


async def _serve_ingress(settings: Settings) -> None:
    from txmail.core.http import serve_until_stopped
    from txmail.core.stopping import stop_on_signals
    from txmail.ingress.app import create_app

    await serve_until_stopped(
        create_app(settings),
        settings.http_host,
        settings.http_port,
        settings,
        stop_on_signals(),
    )


def run_everything(settings: Settings, args: argparse.Namespace) -> int:
    from txmail.cli.run_all import run_all

    asyncio.run(run_all(settings))
    return 0


def migrate_everything(settings: Settings, args: argparse.Namespace) -> int:
    """The workers' tables and the executor's call ledger, both in TXMAIL_DATABASE_URL:
    here, where both are known, so that neither service imports the other."""
    from txmail.fallback.ledger import LedgerUnavailable, migrate_ledger
    from txmail.workers.store import migrate_schema
    from txmail.workers.store.protocol import StoreUnavailable
    from txmail.workers.worker import timeouts_from

    try:
        applied = asyncio.run(migrate_schema(settings.database_url, timeouts_from(settings)))
        asyncio.run(migrate_ledger(settings.database_url))
    except (StoreUnavailable, LedgerUnavailable) as error:
        print(f"txmail: cannot migrate the store: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 2
    done = f"applied migrations {', '.join(map(str, applied))}" if applied else "nothing to do"
    print(f"{done}: the schema and the call ledger are up to date")
    return 0


Command = Callable[[Settings, argparse.Namespace], int]

INGRESS_ROUTES = """\
routes (on TXMAIL_HTTP_HOST:TXMAIL_HTTP_PORT):
  POST /postbacks   Braze's status postbacks (token: TXMAIL_POSTBACK_TOKEN)
  POST /v1/sends    register a send's recipient and variables (token: TXMAIL_API_TOKEN)
  GET  /healthz     200 while the process runs
  GET  /readyz      200 while connected to RabbitMQ, else 503"""

# Before it starts, each long-running process checks what it reads of the rules file,
# with the messages `txmail check-config` prints: the executor all of it, secrets
# included; the workers its [tracking]; the ingress that it is TOML. So the
# internet-facing ingress holds none of the handlers' secrets.
EXECUTORS = frozenset({"fallback", "run"})
WORKERS = frozenset({"worker", "api"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="txmail",
        description="Track Braze transactional emails and run a fallback when one fails. "
        "Configured through TXMAIL_* environment variables (see the README); "
        "each command's --help lists those it reads.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('txmail')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ingress = commands.add_parser(
        "ingress",
        help="serve POST /postbacks and publish each postback to RabbitMQ",
        epilog=INGRESS_ROUTES,
    )
    ingress.set_defaults(handler=run_ingress)
    # worker, api, status and run live with the workers, which own the state they serve;
    # the API's console replays parked fallbacks through the executor's own code.
    from txmail.fallback.parked_operations import BrokerParkedFallbacks
    from txmail.workers.commands import add_commands as add_worker_commands

    add_worker_commands(commands, BrokerParkedFallbacks)
    migrate = commands.add_parser(
        "migrate",
        help="create or update the store's tables and the executor's call ledger, then exit "
        "(workers and the executor do it too when they start)",
    )
    migrate.set_defaults(handler=migrate_everything)

    # --- fallback: `fallback`, `check-config`, `dlq list|replay` ---
    from txmail.fallback.cli import add_fallback_commands

    add_fallback_commands(commands)
    run = commands.add_parser(
        "run",
        help="ingress, worker, api and fallback executor in one process (SQLite by default)",
        epilog="With TXMAIL_RULES it also reads the variables its *_env keys name.",
    )
    run.set_defaults(handler=run_everything)
    add_epilogs(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    try:
        settings = load_settings()
        if settings.rules is not None:
            from txmail.fallback.rules_file import load_rules_file, load_tracking, read_rules_toml

            if args.command in EXECUTORS:
                load_rules_file(settings.rules)
            elif args.command in WORKERS:
                load_tracking(settings.rules)
            elif args.command == "ingress":
                read_rules_toml(settings.rules)
    except ConfigError as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return handler(settings, args)
    except CannotStart as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`txmail dlq list | head`): say nothing more, and keep
        # Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

"""The ``txmail`` command: one entry point, one subcommand per process kind or question."""

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

from txmail.cli.command_help import add_epilogs
from txmail.cli.ingress_processes import CHILD_OPTION, supervise_ingress
from txmail.cli.run_all import run_all
from txmail.core import event_loop
from txmail.core.command import Command, Configuration
from txmail.core.errors import CannotStart, ConfigError
from txmail.core.http import serve_until_stopped
from txmail.core.logs import configure_logging
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import load_settings
from txmail.core.stopping import stop_on_signals
from txmail.fallback.cli import add_fallback_commands
from txmail.fallback.configured import configure
from txmail.fallback.ledger import LedgerUnavailable, migrate_ledger
from txmail.fallback.parking.operations import BrokerParkedFallbacks
from txmail.ingress.app import create_app
from txmail.workers.commands import add_commands as add_worker_commands
from txmail.workers.store import migrate_schema
from txmail.workers.store.protocol import StoreUnavailable
from txmail.workers.timeouts import delivery_timeouts


def run_ingress(config: Configuration, args: argparse.Namespace) -> int:
    if args.processes > 1:
        return supervise_ingress(config.settings, args.processes)
    event_loop.run(_serve_ingress(config, reuse_port=args.reuse_port))
    return 0


async def _serve_ingress(config: Configuration, reuse_port: bool) -> None:
    settings = config.settings
    await serve_until_stopped(
        create_app(settings),
        settings.http_host,
        settings.http_port,
        settings,
        stop_on_signals(),
        reuse_port,
    )


def _process_count(text: str) -> int:
    count = int(text) if text.isdigit() else 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return count


def run_everything(config: Configuration, args: argparse.Namespace) -> int:
    rules = None if config.rules_file is None else configure(config.rules_file)
    event_loop.run(run_all(config, rules))
    return 0


def migrate_everything(config: Configuration, args: argparse.Namespace) -> int:
    """The workers' tables and the executor's call ledger, both in TXMAIL_DATABASE_URL:
    here, where both are known, so that neither service imports the other."""
    url = config.settings.database_url
    try:
        applied = asyncio.run(migrate_schema(url, delivery_timeouts(config)))
        asyncio.run(migrate_ledger(url))
    except (StoreUnavailable, LedgerUnavailable) as error:
        print(f"txmail: cannot migrate the store: {error}", file=sys.stderr)
        return 2
    done = f"applied migrations {', '.join(map(str, applied))}" if applied else "nothing to do"
    print(f"{done}: the schema and the call ledger are up to date")
    return 0


INGRESS_ROUTES = """\
routes (on TXMAIL_HTTP_HOST:TXMAIL_HTTP_PORT):
  POST /postbacks   Braze's status postbacks (token: TXMAIL_POSTBACK_TOKEN)
  POST /v1/sends    register a send's recipient and variables (token: TXMAIL_API_TOKEN)
  GET  /healthz     200 while the process runs
  GET  /readyz      200 while connected to RabbitMQ, else 503
  GET  /openapi.json  this API's OpenAPI 3.1 document
  GET  /metrics     Prometheus metrics (see the README's Metrics section)"""


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
    ingress.add_argument(
        "--processes",
        type=_process_count,
        default=1,
        metavar="N",
        help="serve with N processes sharing the port (SO_REUSEPORT), one per core to use; "
        "the first process supervises them (default: 1, no supervisor)",
    )
    ingress.add_argument(CHILD_OPTION, action="store_true", help=argparse.SUPPRESS)
    ingress.set_defaults(handler=run_ingress)
    # worker, api and status live with the workers, which own the state they serve; the
    # API's console replays parked fallbacks through the executor's own code.
    add_worker_commands(commands, BrokerParkedFallbacks)
    migrate = commands.add_parser(
        "migrate",
        help="create or update the store's tables and the executor's call ledger, then exit "
        "(workers and the executor do it too when they start)",
    )
    migrate.set_defaults(handler=migrate_everything)

    # fallback, check-config, dlq list|replay
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
    return exit_code_of(lambda: _start(args))


def _start(args: argparse.Namespace) -> int:
    config = _configuration(args)
    configure_logging(config.settings.log_level)
    command: Command = args.handler
    return command(config, args)


def exit_code_of(run: Callable[[], int]) -> int:
    """What ``run`` returns, or the exit code of what it raised, said on stderr: the
    one place a configuration problem (ConfigError) becomes exit code 2 for every
    command, and never a traceback."""
    try:
        return run()
    except ConfigError as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 2
    except CannotStart as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`txmail dlq list | head`): say nothing more, and keep
        # Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _configuration(args: argparse.Namespace) -> Configuration:
    """The settings and the rules file, read once for the whole process: every command
    and every part of `txmail run` sees the same. A rules file that breaks its schema
    stops every command before it starts, with every problem it has."""
    settings = load_settings()
    if settings.rules is None or getattr(args, "reads_the_rules_file_itself", False):
        return Configuration(settings, rules_file=None)
    return Configuration(settings, read_rules_file(settings.rules))

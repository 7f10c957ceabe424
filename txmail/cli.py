"""The ``txmail`` command: one entry point, one subcommand per process kind or question."""

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from txmail.errors import CannotStart, ConfigError
from txmail.logs import configure_logging
from txmail.settings import Settings, load_settings


def run_ingress(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_serve_ingress(settings))
    return 0


async def _serve_ingress(settings: Settings) -> None:
    from ingress.app import create_app
    from txmail.http import serve_until_stopped
    from txmail.stopping import stop_on_signals

    await serve_until_stopped(
        create_app(settings),
        settings.http_host,
        settings.http_port,
        settings.shutdown_timeout.total_seconds(),
        stop_on_signals(),
    )


def run_everything(settings: Settings, args: argparse.Namespace) -> int:
    from txmail.run_all import run_all

    asyncio.run(run_all(settings))
    return 0


Command = Callable[[Settings, argparse.Namespace], int]

# The commands that start a long-running process: each refuses to start on an invalid
# rules file, with the same message `txmail check-config` prints.
PROCESSES = frozenset({"ingress", "worker", "api", "fallback", "run"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="txmail",
        description="Track Braze transactional emails and run a fallback when one fails. "
        "Configured through TXMAIL_* environment variables (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ingress = commands.add_parser(
        "ingress", help="serve POST /postbacks and publish each postback to RabbitMQ"
    )
    ingress.set_defaults(handler=run_ingress)
    # worker, api, status and run live with the workers, which own the state they serve.
    from workers.commands import add_commands as add_worker_commands

    add_worker_commands(commands)

    # --- fallback: `fallback`, `check-config`, `dlq list|replay` ---
    from fallback.cli import add_fallback_commands

    add_fallback_commands(commands)
    run = commands.add_parser(
        "run",
        help="ingress, worker, api and fallback executor in one process (SQLite by default)",
    )
    run.set_defaults(handler=run_everything)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    try:
        settings = load_settings()
        if args.command in PROCESSES:
            from fallback.rules_file import load_configured_rules

            load_configured_rules(settings)
    except ConfigError as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return handler(settings, args)
    except CannotStart as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

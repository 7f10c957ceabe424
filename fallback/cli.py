"""The fallback subcommands of ``txmail``: the executor and the rules file check (``dlq``
is in fallback/parking/dlq.py)."""

import argparse
import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import structlog

from txmail.core.durations import format_duration
from txmail.core.errors import ConfigError
from txmail.core.health import create_health_app
from txmail.core.http import serving
from txmail.core.settings import Settings
from txmail.core.stopping import stop_on_signals
from txmail.fallback.executor.chain import LEASE_MARGIN
from txmail.fallback.executor.service import FallbackExecutor, running_executor
from txmail.fallback.parking.dlq import add_dlq_commands
from txmail.fallback.rules_file import RulesFile, check_rules_file, load_rules_file, warnings

log = structlog.get_logger(__name__)


def add_fallback_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    run = commands.add_parser(
        "fallback",
        help="consume fallback requests and run the handlers the rules file picks",
        epilog="It also reads the variables the rules file's *_env keys name.",
    )
    run.set_defaults(handler=run_fallback)

    check = commands.add_parser(
        "check-config", help="check the settings and the rules file; list every problem"
    )
    check.add_argument("path", nargs="?", type=Path, help="rules file (default: TXMAIL_RULES)")
    check.set_defaults(handler=check_config)

    add_dlq_commands(commands)


def check_config(settings: Settings, args: argparse.Namespace) -> int:
    path: Path | None = args.path or settings.rules
    if path is None:
        print("txmail: no rules file: set TXMAIL_RULES or name one", file=sys.stderr)
        return 2
    rules_file, problems = check_rules_file(path)
    if rules_file is None:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(rules_file.handlers)} handlers, {len(rules_file.rules)} rules)")
    for warning in _warnings(rules_file, settings):
        print(f"  warning: {warning}", file=sys.stderr)
    return 0


def _warnings(rules_file: RulesFile, settings: Settings) -> list[str]:
    """The rules file's warnings, and each handler whose lease outlasts the retries: a
    request back after an executor died mid-call finds the lease live (`busy`), which
    takes a retry, and is parked before the lease ends."""
    retries = sum(settings.fallback_retry_schedule, timedelta())
    return [
        *warnings(rules_file),
        *(
            f"handlers.{name}: its lease (timeout {format_duration(lease - LEASE_MARGIN)} "
            f"+ {format_duration(LEASE_MARGIN)}) outlasts TXMAIL_FALLBACK_RETRY_SCHEDULE "
            f"({format_duration(retries)} in all): a request taken back after an executor "
            "died calling it is parked; lengthen the schedule"
            for name, handler in rules_file.handlers.items()
            if (lease := handler.config.timeout + LEASE_MARGIN) > retries
        ),
    ]


def run_fallback(settings: Settings, args: argparse.Namespace) -> int:
    if settings.rules is None:
        print("txmail: TXMAIL_RULES is not set: the executor needs a rules file", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(settings, load_rules_file(settings.rules)))
    except ConfigError as error:  # an invalid file, or a plug-in unusable once built
        print(f"txmail: {error}", file=sys.stderr)
        return 2
    return 0


async def _serve(settings: Settings, rules_file: RulesFile) -> None:
    stop = stop_on_signals()
    running: list[FallbackExecutor] = []  # the executor, once connected

    async def not_ready() -> list[str]:
        return await running[0].not_ready() if running else ["not connected to RabbitMQ yet"]

    # Listening first: a port in use ends the process before it waits for the broker.
    async with (
        serving(create_health_app(not_ready), settings.http_host, settings.metrics_port, settings),
        running_executor(settings, rules_file, stop) as executor,
    ):
        if executor is not None:  # None: stopped while waiting for the broker
            running.append(executor)
            for warning in _warnings(rules_file, settings):
                log.warning("rules file", warning=warning)
            log.info("fallback executor running", rules=str(rules_file.path))
            await stop.wait()
            log.info("stopping: finishing fallbacks in progress")
    log.info("stopped")

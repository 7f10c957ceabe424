"""The fallback subcommands of ``txmail``: the executor and the rules file check (``dlq``
is in fallback/parking/dlq.py)."""

import argparse
import sys
from datetime import timedelta
from pathlib import Path

import structlog

from txmail.core import event_loop
from txmail.core.command import Configuration, Subcommands
from txmail.core.durations import format_duration
from txmail.core.errors import ConfigError
from txmail.core.health import create_health_app
from txmail.core.http import serving
from txmail.core.metrics import exposed
from txmail.core.settings import Settings
from txmail.core.stopping import stop_on_signals
from txmail.fallback import metrics
from txmail.fallback.configured import FallbackRules, check_file, configure, warnings
from txmail.fallback.executor.chain import LEASE_MARGIN
from txmail.fallback.executor.service import FallbackExecutor, running_executor
from txmail.fallback.parking.dlq import add_dlq_commands

log = structlog.get_logger(__name__)


def add_fallback_commands(commands: Subcommands) -> None:
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
    # It reads the file itself, to list every problem (exit 1) where the other commands
    # would refuse the file at start (exit 2).
    check.set_defaults(handler=check_config, reads_the_rules_file_itself=True)

    add_dlq_commands(commands)


def check_config(config: Configuration, args: argparse.Namespace) -> int:
    path: Path | None = args.path or config.settings.rules
    if path is None:
        raise ConfigError("no rules file: set TXMAIL_RULES or name one")
    rules, problems = check_file(path)
    if rules is None:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(rules.handlers)} handlers, {len(rules.rules)} rules)")
    for warning in _warnings(rules, config.settings):
        print(f"  warning: {warning}", file=sys.stderr)
    return 0


def _warnings(rules: FallbackRules, settings: Settings) -> list[str]:
    """The rules file's warnings, and each handler whose lease outlasts the retries: a
    request back after an executor died mid-call finds the lease live (`busy`), which
    takes a retry, and is parked before the lease ends."""
    retries = sum(settings.fallback_retry_schedule, timedelta())
    return [
        *warnings(rules),
        *(
            f"handlers.{name}: its lease (timeout {format_duration(lease - LEASE_MARGIN)} "
            f"+ {format_duration(LEASE_MARGIN)}) outlasts TXMAIL_FALLBACK_RETRY_SCHEDULE "
            f"({format_duration(retries)} in all): a request taken back after an executor "
            "died calling it is parked; lengthen the schedule"
            for name, handler in rules.handlers.items()
            if (lease := handler.config.timeout + LEASE_MARGIN) > retries
        ),
    ]


def run_fallback(config: Configuration, args: argparse.Namespace) -> int:
    if config.rules_file is None:
        raise ConfigError("TXMAIL_RULES is not set: the executor needs a rules file")
    event_loop.run(_serve(config.settings, configure(config.rules_file)))
    return 0


async def _serve(settings: Settings, rules: FallbackRules) -> None:
    stop = stop_on_signals()
    running: list[FallbackExecutor] = []  # the executor, once connected

    async def not_ready() -> list[str]:
        return await running[0].not_ready() if running else ["not connected to RabbitMQ yet"]

    # Listening first: a port in use ends the process before it waits for the broker.
    async with (
        serving(
            create_health_app(not_ready, exposed(metrics.REGISTRY)),
            settings.http_host,
            settings.metrics_port,
            settings,
        ),
        running_executor(settings, rules, stop) as executor,
    ):
        if executor is not None:  # None: stopped while waiting for the broker
            running.append(executor)
            for warning in _warnings(rules, settings):
                log.warning("rules file", warning=warning)
            log.info("fallback executor running", rules=str(rules.path))
            await stop.wait()
            log.info("stopping: finishing fallbacks in progress")
    log.info("stopped")

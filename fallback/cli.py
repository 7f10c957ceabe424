"""The fallback subcommands of ``txmail``: the executor, the parking queue, the rules file."""

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

import structlog

from fallback.executor import FallbackExecutor, fallback_topology, running_executor
from fallback.parking import ParkedRequest, list_parked, replay_parked
from fallback.rules_file import RulesFile, check_rules_file, load_rules_file
from txmail.broker import connect_until_up
from txmail.errors import BrokerUnavailable, ConfigError
from txmail.health import create_health_app
from txmail.http import serving
from txmail.settings import Settings
from txmail.stopping import stop_on_signals

log = structlog.get_logger(__name__)

# How long the dlq commands wait for RabbitMQ before giving up.
CONNECT_TIMEOUT = 30


def add_fallback_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    run = commands.add_parser(
        "fallback", help="consume fallback requests and run the handlers the rules file picks"
    )
    run.set_defaults(handler=run_fallback)

    check = commands.add_parser(
        "check-config", help="check the settings and the rules file; list every problem"
    )
    check.add_argument("path", nargs="?", type=Path, help="rules file (default: TXMAIL_RULES)")
    check.set_defaults(handler=check_config)

    dlq = commands.add_parser("dlq", help="parked fallback requests: list, replay")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show what is parked and why (changes nothing)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=dlq_list)
    replay = actions.add_parser("replay", help="put parked requests back on the fallback queue")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "ids", nargs="*", default=[], metavar="ID", help="message id or idempotency key"
    )
    which.add_argument("--all", action="store_true", help="every parked request")
    replay.set_defaults(handler=dlq_replay)


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
    return 0


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
        serving(create_health_app(not_ready), settings.http_host, settings.metrics_port),
        running_executor(settings, rules_file, stop) as executor,
    ):
        if executor is not None:  # None: stopped while waiting for the broker
            running.append(executor)
            log.info("fallback executor running", rules=str(rules_file.path))
            await stop.wait()
            log.info("stopping: finishing fallbacks in progress")
    log.info("stopped")


def dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    try:
        parked = asyncio.run(_with_connection(settings, None, replay=False))
    except BrokerUnavailable as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 1
    if args.json:
        for request in parked:
            print(json.dumps(asdict(request)))
        return 0
    print(f"{len(parked)} parked fallback request(s)")
    for request in parked:
        _print_parked(request)
    return 0


def dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    ids = None if args.all else set(args.ids)
    try:
        replayed = asyncio.run(_with_connection(settings, ids, replay=True))
    except BrokerUnavailable as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 1
    for request in replayed:
        print(f"replayed {request.message_id} ({request.idempotency_key})")
    missing = (ids or set()) - {i for r in replayed for i in r.ids}
    for unknown in sorted(missing):
        print(f"txmail: nothing parked with id {unknown!r}", file=sys.stderr)
    print(f"{len(replayed)} replayed")
    return 1 if missing else 0


async def _with_connection(
    settings: Settings, ids: set[str] | None, replay: bool
) -> list[ParkedRequest]:
    try:
        connection = await asyncio.wait_for(connect_until_up(settings.amqp_url), CONNECT_TIMEOUT)
    except TimeoutError:
        raise BrokerUnavailable(f"RabbitMQ not reachable within {CONNECT_TIMEOUT}s") from None
    try:
        topology = fallback_topology(settings)
        if replay:
            return await replay_parked(connection, topology, ids)
        return await list_parked(connection, topology)
    finally:
        await connection.close()


def _print_parked(request: ParkedRequest) -> None:
    print(f"- id: {request.message_id}")
    print(f"  idempotency_key: {request.idempotency_key or '-'}")
    print(
        f"  trigger: {request.trigger or '-'}  external_send_id: {request.external_send_id or '-'}"
    )
    print(
        f"  parked_at: {request.parked_at}  attempts: {request.attempts}"
        f"  succeeded: {', '.join(request.succeeded) or '-'}"
    )
    print(f"  reason: {request.reason}")

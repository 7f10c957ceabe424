"""``txmail dlq list|replay``: what the parking and dead-letter queues hold, and putting
it back once the cause is fixed. Entries stream out as they are read."""

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from contextlib import aclosing
from datetime import UTC, datetime

from txmail.core.command import Configuration, Subcommands
from txmail.core.durations import parse_duration
from txmail.core.errors import BrokerUnavailable
from txmail.core.events import Trigger
from txmail.core.settings import Settings
from txmail.core.terminal import printable
from txmail.fallback.executor.service import fallback_topology
from txmail.fallback.parking.entries import DeadLetter, ParkedRequest
from txmail.fallback.parking.held import (
    Counts,
    Held,
    Outcome,
    Selection,
    Visited,
    connected_broker,
    visit,
)

# How long the dlq commands wait for RabbitMQ before giving up.
CONNECT_TIMEOUT = 30
# A run that reads for longer says how far it got on stderr this often (seconds).
PROGRESS_INTERVAL = 2.0

QUEUES: dict[str, type[Held]] = {
    "parked": ParkedRequest,
    "dead-letter": DeadLetter,
}
NOUNS = {"parked": "parked fallback request(s)", "dead-letter": "dead-lettered message(s)"}
MISSING = {"parked": "parked", "dead-letter": "dead-lettered"}

EPILOG = """\
queues:
  parked       {ns}.fallback.parked: fallback requests that failed for good
  dead-letter  {ns}.dead-letter: postbacks, registrations and fallback requests no
               consumer could process in 6 deliveries, or refused as not the contract;
               a replay publishes each where it was published before (x-death header)"""


def add_dlq_commands(commands: Subcommands) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="parked fallback requests and dead-lettered messages: list, replay",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="show what is held and why (changes nothing)", epilog=EPILOG
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_selection_options(listing)
    listing.set_defaults(handler=dlq_list)
    replay = actions.add_parser(
        "replay",
        help="put held messages back where they were going, confirmed, then remove them",
        epilog=EPILOG,
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "ids",
        nargs="*",
        default=[],
        metavar="ID",
        help="message id, idempotency key (or, dead-lettered, dispatch id)",
    )
    which.add_argument("--all", action="store_true", help="every one the other options select")
    replay.add_argument(
        "--dry-run", action="store_true", help="say what would be replayed, change nothing"
    )
    _add_selection_options(replay)
    replay.set_defaults(handler=dlq_replay)


LIST_EXIT_CODES = "0 listed; 1 RabbitMQ not reachable; 2 bad settings or options"
REPLAY_EXIT_CODES = (
    "0 all replayed; 1 an ID was not found, a message could not be replayed, or RabbitMQ "
    "not reachable; 2 bad settings or options"
)


def _add_selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queue", choices=sorted(QUEUES), default="parked", help="which queue (default: parked)"
    )
    parser.add_argument("--limit", type=_positive, metavar="N", help="at most N messages")
    parser.add_argument(
        "--trigger", choices=[t.value for t in Trigger], help="only fallback requests of it"
    )
    parser.add_argument(
        "--handler",
        dest="handler_name",
        metavar="NAME",
        help="only requests this handler failed on (parked only)",
    )
    parser.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="only those parked or dead-lettered since: a duration ago (1h, 2d) or an ISO time",
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def _since(text: str) -> datetime:
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (1h, 30m, 2d) nor an ISO time (2026-11-29T06:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _selection(args: argparse.Namespace, ids: set[str] | None = None) -> Selection | str:
    """The selection the options ask for, or why they make no sense."""
    if args.handler_name is not None and args.queue != "parked":
        return "--handler applies to --queue parked only"
    return Selection(
        ids=ids, trigger=args.trigger, handler=args.handler_name, since=args.since, limit=args.limit
    )


def dlq_list(config: Configuration, args: argparse.Namespace) -> int:
    selection = _selection(args)
    if isinstance(selection, str):
        print(f"txmail: {selection}", file=sys.stderr)
        return 2
    counts = Counts()

    def show(visited: Visited[Held]) -> None:
        if args.json:
            print(json.dumps(visited.held.as_json()), flush=True)
        else:
            print(visited.held.describe(), flush=True)

    try:
        asyncio.run(_visit(config.settings, args.queue, selection, counts, show))
    except BrokerUnavailable as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 1
    if not args.json:
        print(_summary(args.queue, counts, selection, "shown"))
    return 0


def dlq_replay(config: Configuration, args: argparse.Namespace) -> int:
    ids = None if args.all else set(args.ids)
    selection = _selection(args, ids)
    if isinstance(selection, str):
        print(f"txmail: {selection}", file=sys.stderr)
        return 2
    counts = Counts()
    found: set[str] = set()
    failed = 0

    def report(visited: Visited[Held]) -> None:
        nonlocal failed
        found.update(visited.held.ids)
        name = printable(visited.held.name)
        if visited.outcome is Outcome.NOT_REPLAYED:
            failed += 1
            print(f"txmail: {name}: not replayed: {printable(visited.problem)}", file=sys.stderr)
        else:
            print(f"{visited.outcome.value} {name}", flush=True)

    try:
        asyncio.run(
            _visit(
                config.settings,
                args.queue,
                selection,
                counts,
                report,
                replay=True,
                dry_run=args.dry_run,
            )
        )
    except BrokerUnavailable as error:
        print(f"txmail: {error}", file=sys.stderr)
        return 1
    # Ids are known missing only when the whole queue was read.
    missing = (ids or set()) - found if counts.read == counts.total else set()
    for unknown in sorted(missing):
        print(
            f"txmail: nothing {MISSING[args.queue]} with id '{printable(unknown)}'", file=sys.stderr
        )
    done = counts.selected - failed
    print(f"{done} {'would be replayed (dry run)' if args.dry_run else 'replayed'}")
    return 1 if missing or failed else 0


async def _visit(
    settings: Settings,
    queue: str,
    selection: Selection,
    counts: Counts,
    each: Callable[[Visited[Held]], None],
    replay: bool = False,
    dry_run: bool = False,
) -> None:
    topology = fallback_topology(settings)
    progress = _Progress(queue)
    async with connected_broker(settings, topology, CONNECT_TIMEOUT) as broker:
        visiting = visit(
            broker,
            topology,
            QUEUES[queue],
            selection,
            replay=replay,
            dry_run=dry_run,
            counts=counts,
            on_read=progress,
        )
        # Closed here, while the connection is still open, when ``each`` fails (a
        # reader that went away): it gives the messages back in their place.
        async with aclosing(visiting):
            async for visited in visiting:
                each(visited)
    if counts.stopped:
        print(
            f"txmail: stopped after {counts.read} of {counts.total}: {counts.stopped}",
            file=sys.stderr,
        )


class _Progress:
    """Every PROGRESS_INTERVAL seconds of reading, one line on stderr."""

    def __init__(self, queue: str) -> None:
        self._queue = queue
        self._next = time.monotonic() + PROGRESS_INTERVAL

    def __call__(self, counts: Counts) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + PROGRESS_INTERVAL
            print(
                f"txmail: read {counts.read} of {counts.total} {self._queue}, "
                f"{counts.selected} selected",
                file=sys.stderr,
                flush=True,
            )


def _summary(queue: str, counts: Counts, selection: Selection, verb: str) -> str:
    text = f"{counts.total} {NOUNS[queue]}"
    if selection != Selection():
        text += f", {counts.selected} {verb}"
    return text

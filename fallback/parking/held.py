"""Reading and replaying a queue that holds messages for ops (the parking queue, the
dead-letter queue), for ``txmail dlq``.

Reading never loses a message: each one is delivered unacknowledged and, unless it
was replayed (republished, confirmed, then acked), given back in its place when the
channel closes. Messages come through one consumer with a prefetch as large as the
queue, not one ``basic.get`` each, and each is yielded as soon as it is read.
"""

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Protocol, Self, TypeVar

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from txmail.core.broker import BROKER_ERRORS, Broker, Outgoing
from txmail.core.errors import BrokerUnavailable, ExchangeUnusable, NotTaken
from txmail.core.readable import readable
from txmail.core.settings import Settings
from txmail.core.topology import Topology

# AMQP's prefetch count is 16 bits: one run leaves at most this many messages in place
# (unacked until it ends); only replayed ones make room.
MAX_PREFETCH = 65_535
# Publishes awaiting their confirm at once while replaying.
REPLAY_WINDOW = 100
# A message the queue counted that does not come within this long was taken by
# someone else (another `dlq replay`): stop there.
READ_TIMEOUT = 5.0


class Held(Protocol):
    """One message of a held queue, as ``txmail dlq`` shows and selects it."""

    @property
    def ids(self) -> set[str]: ...

    @property
    def at(self) -> datetime | None: ...

    @property
    def trigger(self) -> str | None: ...

    @property
    def failed(self) -> tuple[str, ...]: ...

    @property
    def name(self) -> str:
        """How a replay names it on a line: its id, and what says more."""
        ...

    def describe(self) -> str:
        """A few lines for a person, every value from outside escaped."""
        ...

    def as_json(self) -> dict[str, Any]: ...

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> Self: ...

    @staticmethod
    def held_in(topology: Topology) -> str: ...

    @staticmethod
    def replay_target(message: AbstractIncomingMessage, topology: Topology) -> Outgoing | str:
        """Where to republish it, or why it cannot be."""
        ...


@dataclass(frozen=True)
class Selection:
    """Which held messages a command is about; None means any."""

    ids: set[str] | None = None
    trigger: str | None = None
    handler: str | None = None
    since: datetime | None = None
    limit: int | None = None

    def matches(self, held: Held) -> bool:
        if self.ids is not None and not held.ids & self.ids:
            return False
        if self.trigger is not None and held.trigger != self.trigger:
            return False
        if self.handler is not None and self.handler not in held.failed:
            return False
        if self.since is not None:
            at = held.at
            return at is not None and at >= self.since
        return True


class Outcome(StrEnum):
    LISTED = "listed"
    REPLAYED = "replayed"
    WOULD_REPLAY = "would replay"  # --dry-run
    NOT_REPLAYED = "not replayed"


H = TypeVar("H", bound=Held)


@dataclass(frozen=True)
class Visited(Generic[H]):
    held: H
    outcome: Outcome
    problem: str = ""  # why it was not replayed


@dataclass
class Counts:
    """How far a visit got, for progress lines."""

    total: int = 0
    read: int = 0
    selected: int = 0
    replayed: int = 0
    # Why it stopped before reading them all (not counting --limit), or "".
    stopped: str = ""


async def visit(
    broker: Broker,
    topology: Topology,
    kind: type[H],
    selection: Selection,
    replay: bool = False,
    dry_run: bool = False,
    counts: Counts | None = None,
    on_read: Callable[[Counts], None] = lambda counts: None,
) -> AsyncGenerator[Visited[H]]:
    """Each selected message held now (not those arriving while this runs), in queue
    order, replayed first when ``replay`` (unless ``dry_run``)."""
    counts = counts if counts is not None else Counts()
    try:
        channel = await broker.open_channel()
        replaying: deque[tuple[H, asyncio.Task[str]]] = deque()
        selected: AsyncGenerator[tuple[AbstractIncomingMessage, H]] | None = None
        try:
            await topology.declare(channel)
            queue = await channel.declare_queue(kind.held_in(topology), passive=True)
            counts.total = queue.declaration_result.message_count or 0
            selected = _selected(channel, queue, kind, selection, counts, on_read)
            async for message, held in selected:
                if not replay:
                    yield Visited(held, Outcome.LISTED)
                elif dry_run:
                    yield Visited(held, Outcome.WOULD_REPLAY)
                elif isinstance(target := kind.replay_target(message, topology), str):
                    yield Visited(held, Outcome.NOT_REPLAYED, target)
                else:
                    task = asyncio.create_task(_republish(broker, message, target))
                    replaying.append((held, task))
                    # Confirms come back pipelined; report them in order as they do.
                    while replaying and (len(replaying) >= REPLAY_WINDOW or replaying[0][1].done()):
                        yield await _finished(counts, *replaying.popleft())
            while replaying:
                yield await _finished(counts, *replaying.popleft())
        finally:
            for _, task in replaying:  # left by an error, or by a reader that stopped
                task.cancel()
            if selected is not None:
                # Before the channel: closing the channel under an open queue iterator
                # makes it give its messages back on a channel the broker closed.
                await selected.aclose()
            # Gives back every message delivered and not acked, in its place.
            await channel.close()
    except BROKER_ERRORS as error:
        raise BrokerUnavailable(f"RabbitMQ: {readable(error)}") from error


async def _selected(
    channel: AbstractChannel,
    queue: AbstractQueue,
    kind: type[H],
    selection: Selection,
    counts: Counts,
    on_read: Callable[[Counts], None],
) -> AsyncGenerator[tuple[AbstractIncomingMessage, H]]:
    """The selected messages among the first ``counts.total``, up to the limit."""
    if counts.total == 0:
        return
    await channel.set_qos(prefetch_count=min(counts.total, MAX_PREFETCH))
    async with queue.iterator(no_ack=False) as messages:
        while counts.read < counts.total and (
            selection.limit is None or counts.selected < selection.limit
        ):
            if counts.read - counts.replayed >= MAX_PREFETCH:
                counts.stopped = f"{MAX_PREFETCH} left in place, as many as one run can"
                return
            try:
                message = await asyncio.wait_for(anext(messages), READ_TIMEOUT)
            except TimeoutError:
                counts.stopped = "the rest did not come (taken by another consumer?)"
                return
            held = kind.from_message(message)
            selected = selection.matches(held)
            counts.read += 1
            counts.selected += selected
            on_read(counts)
            if selected:
                yield message, held


async def _finished(counts: Counts, held: H, task: "asyncio.Task[str]") -> Visited[H]:
    problem = await task
    counts.replayed += not problem
    return Visited(held, Outcome.NOT_REPLAYED if problem else Outcome.REPLAYED, problem)


async def _republish(broker: Broker, message: AbstractIncomingMessage, target: Outgoing) -> str:
    """Publish, and ack the original once confirmed; "" or why it was not replayed."""
    try:
        await broker.publish([target])
    except (NotTaken, ExchangeUnusable) as error:
        return f"RabbitMQ did not take it back ({error}): it stays where it is"
    await message.ack()
    return ""


@asynccontextmanager
async def connected_broker(
    settings: Settings, topology: Topology, within: float
) -> AsyncIterator[Broker]:
    """A broker of its own for one visit, connected within ``within`` seconds (else
    BrokerUnavailable), closed after: neither ``txmail dlq`` nor a console page should
    wait on RabbitMQ without end."""
    broker = Broker(settings.amqp_url, topology, settings.publish_timeout, say_up=False)
    try:
        broker.start()
        try:
            await asyncio.wait_for(broker.wait_ready(), within)
        except TimeoutError:
            raise BrokerUnavailable(f"RabbitMQ not reachable within {within:g}s") from None
        yield broker
    finally:
        await broker.close()

"""A connection to RabbitMQ kept up by txmail: opened again, with backoff, after each loss.

aio-pika's robust connection reconnects by itself, but restores consumers only on queues
declared through it, says nothing while it has none, and keeps reconnecting after its
first attempt was cancelled. Here a connection, with what was built on it, is either up
and in use or known to be down, and closing ends whatever attempt is in progress.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any, Generic, TypeVar

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from txmail.core.backoff import until_up
from txmail.core.one_write_per_pass import write_once_per_pass
from txmail.core.readable import readable

log = structlog.get_logger(__name__)

T = TypeVar("T")

# What a lost, refused or slow broker raises through aio-pika.
BROKER_ERRORS = (*CONNECTION_EXCEPTIONS, asyncio.TimeoutError)

# A broker that accepts TCP but does not answer must not stall an attempt for ever.
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0

# What to build on a new connection: the thing to use, and the channels whose closing
# means it is unusable (the connection is then opened again).
Build = Callable[[AbstractConnection], Awaitable[tuple[T, Sequence[AbstractChannel]]]]


class KeptConnection(Generic[T]):
    def __init__(self, url: str, build: Build[T], say_up: bool = True, **context: Any) -> None:
        self._url = url
        # False for a one-shot command, whose stderr is for its own messages: failures
        # to connect are said all the same.
        self._say_up = say_up
        self._build = build
        self._context = context  # said in every log line: what the connection is for
        self._connection: AbstractConnection | None = None
        self._built: T | None = None
        self._keeping: asyncio.Task[None] | None = None
        self._lost: asyncio.Event | None = None
        self._up = asyncio.Event()  # set while ``current`` is not None
        self.times_up = 0  # how many times it came up: tells a reconnection apart

    @property
    def current(self) -> T | None:
        """What was built on the connection while it is up; None while it is not."""
        return self._built

    @property
    def connection(self) -> AbstractConnection | None:
        """The connection while it is open (for what only it can tell: blocked, say)."""
        return self._connection

    async def wait_up(self) -> None:
        """Return once the connection is up (at once if it is)."""
        await self._up.wait()

    def start(self) -> None:
        """Connect in the background, and again after every loss; returns at once."""
        self._keeping = asyncio.create_task(self._keep_up(), name="broker-connection")

    def reopen(self) -> None:
        """Open everything again, as after a loss: what was built is no longer usable."""
        if self._lost is not None:
            self._lost.set()

    async def stop_reconnecting(self) -> None:
        """Connect no more; a connection that is up stays open (for acks) until close()."""
        if self._keeping is not None:
            self._keeping.cancel()
            await asyncio.gather(self._keeping, return_exceptions=True)
            self._keeping = None

    async def close(self) -> None:
        await self.stop_reconnecting()
        self._built = None
        self._up.clear()
        if self._connection is not None:
            await _close_quietly(self._connection)
            self._connection = None

    async def _keep_up(self) -> None:
        while True:
            connection, built, channels = await until_up(
                self._open, "broker", BROKER_ERRORS, **self._context
            )
            lost = self._lost = asyncio.Event()
            why: list[BaseException] = []
            connection.close_callbacks.add(_setter(lost, why))
            for channel in channels:
                channel.close_callbacks.add(_setter(lost, why))
            if connection.is_closed or any(channel.is_closed for channel in channels):
                lost.set()  # closed before the callbacks were in place
            self._connection, self._built = connection, built
            self._up.set()
            self.times_up += 1
            if self._say_up:
                log.info("broker connected", **self._context)
            try:
                await lost.wait()
            finally:
                self._built = None
                self._up.clear()
            log.warning(
                "broker connection lost, reconnecting",
                error=readable(why[0]) if why else None,
                **self._context,
            )
            self._connection = None
            await _close_quietly(connection)

    async def _open(self) -> tuple[AbstractConnection, T, Sequence[AbstractChannel]]:
        # Made here rather than by aio_pika.connect(), which drops a connection whose
        # attempt failed without closing it.
        connection = write_once_per_pass(aio_pika.Connection(URL(self._url)))
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                await connection.connect()
                built, channels = await self._build(connection)
        except BaseException:
            await _close_quietly(connection)
            raise
        return connection, built, channels


def _setter(event: asyncio.Event, why: list[BaseException]) -> Callable[..., None]:
    """A close callback: aio-pika passes the closed object and the reason, if any."""

    def closed(_: object, error: BaseException | None = None, *__: object) -> None:
        if error is not None:
            why.append(error)
        event.set()

    return closed


async def _close_quietly(connection: AbstractConnection) -> None:
    """Close, within CLOSE_TIMEOUT: a broker that went away cannot answer the close."""
    with suppress(*BROKER_ERRORS):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await connection.close()

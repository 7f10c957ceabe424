"""The connection to RabbitMQ: connect (and reconnect) by itself, publish with confirms.

A process starts without waiting for the broker; until the first connection is up,
and while a lost one is being re-established, publishing raises BrokerUnavailable
and ``is_ready`` is false, so callers can answer 503 instead of hanging.
"""

import asyncio
import itertools
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from txmail.errors import BrokerUnavailable
from txmail.topology import Topology

log = structlog.get_logger(__name__)

# How long to wait between attempts to make the first connection; after that,
# aio-pika's robust connection reconnects on its own with the same interval.
RECONNECT_INTERVAL = 1.0

# aio-pika holds a channel's lock until each publish frame is written to the socket,
# so one channel writes one publish at a time; a few channels keep several in the
# write path while their confirms come back pipelined.
PUBLISH_CHANNELS = 4

# What a lost, refused or slow broker raises through aio-pika.
BROKER_ERRORS = (*CONNECTION_EXCEPTIONS, asyncio.TimeoutError)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish persistently on the events exchange."""

    routing_key: str
    body: bytes
    message_id: str
    type: str
    content_type: str = "application/json"
    headers: dict[str, str] | None = None

    def to_message(self) -> aio_pika.Message:
        return aio_pika.Message(
            self.body,
            content_type=self.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=self.message_id,
            type=self.type,
            headers=dict(self.headers or {}),
        )


class Broker:
    def __init__(self, url: str, topology: Topology, publish_timeout: timedelta) -> None:
        self._url = url
        self._topology = topology
        self._publish_timeout = publish_timeout.total_seconds()
        self._connection: AbstractRobustConnection | None = None
        self._channels: list[AbstractRobustChannel] = []
        self._exchanges: list[AbstractExchange] = []
        self._turn = itertools.count()
        self._connecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        self._connecting = asyncio.create_task(self._connect_until_up(), name="broker-connect")

    async def _connect_until_up(self) -> None:
        while True:
            connection: AbstractRobustConnection | None = None
            try:
                connection = await aio_pika.connect_robust(
                    self._url, reconnect_interval=RECONNECT_INTERVAL
                )
                channels = [
                    # Returned (unroutable) messages raise instead of vanishing after an ack.
                    await connection.channel(publisher_confirms=True, on_return_raises=True)
                    for _ in range(PUBLISH_CHANNELS)
                ]
                exchanges = [await self._topology.declare(channel) for channel in channels]
            except BROKER_ERRORS as error:
                # Also a topology that exists with other arguments (PRECONDITION_FAILED):
                # say so and keep trying, an operator can fix it without a restart.
                log.warning("broker not usable, retrying", error=str(error) or repr(error))
                if connection is not None:
                    await connection.close()
                await asyncio.sleep(RECONNECT_INTERVAL)
                continue
            self._connection = connection
            self._channels = channels
            self._exchanges = exchanges
            log.info("broker connected", namespace=self._topology.namespace)
            return

    @property
    def is_ready(self) -> bool:
        """True while the connection and the publishing channels are open."""
        return (
            self._connection is not None
            and not self._connection.is_closed
            and bool(self._channels)
            and not any(channel.is_closed for channel in self._channels)
        )

    @property
    def is_blocked(self) -> bool:
        """True while RabbitMQ blocks this connection's publishes (connection.blocked,
        sent on a memory or disk alarm). aiormq keeps this only in a private event and
        offers no callback, so it is read there; tests/test_overload.py pins it."""
        underlay = self._connection.transport if self._connection is not None else None
        if underlay is None:
            return False
        unblocked = getattr(underlay.connection, "_Connection__connection_unblocked", None)
        return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish every message and wait until the broker confirmed each one.

        Raises BrokerUnavailable when any of them was not confirmed in time; some may
        have been stored all the same, which is why every event carries an id that
        makes a republish harmless.
        """
        if not self.is_ready:
            raise BrokerUnavailable("not connected to RabbitMQ")
        exchanges = self._exchanges
        publishes = [
            exchanges[next(self._turn) % len(exchanges)].publish(
                m.to_message(), m.routing_key, mandatory=True
            )
            for m in messages
        ]
        try:
            async with asyncio.timeout(self._publish_timeout):
                if len(publishes) == 1:
                    await publishes[0]  # most requests carry one event: spare gather's task
                else:
                    await asyncio.gather(*publishes)
        except BROKER_ERRORS as error:
            raise BrokerUnavailable(f"RabbitMQ did not confirm: {error!r}") from error

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()


async def connect_until_up(url: str) -> AbstractRobustConnection:
    """A robust connection to ``url``, tried every RECONNECT_INTERVAL until it is up."""
    while True:
        try:
            return await aio_pika.connect_robust(url, reconnect_interval=RECONNECT_INTERVAL)
        except BROKER_ERRORS as error:
            log.warning("broker not reachable, retrying", error=str(error) or repr(error))
            await asyncio.sleep(RECONNECT_INTERVAL)


async def connect_unless_stopped(
    url: str, stop: asyncio.Event | None
) -> AbstractRobustConnection | None:
    """``connect_until_up``, given up (None) when ``stop`` is set first: a SIGTERM while
    the broker is down must still stop the process."""
    if stop is None:
        return await connect_until_up(url)
    connecting = asyncio.ensure_future(connect_until_up(url))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    with suppress(asyncio.CancelledError):
        await connecting
    return None

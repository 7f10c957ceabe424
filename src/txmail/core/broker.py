"""Publishing to RabbitMQ with confirms, over a connection kept up by itself.

A process starts without waiting for the broker; until the first connection is up,
and while a lost one is being re-established, publishing raises BrokerUnavailable
and ``is_ready`` is false, so callers can answer 503 instead of hanging.
"""

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractRobustConnection,
)
from yarl import URL

from txmail.core.backoff import until_up
from txmail.core.errors import BrokerUnavailable
from txmail.core.kept_connection import BROKER_ERRORS, OPEN_TIMEOUT, KeptConnection
from txmail.core.readable import readable
from txmail.core.stopping import unless_stopped
from txmail.core.topology import Topology

__all__ = ["BROKER_ERRORS", "Broker", "Outgoing", "connect_unless_stopped", "connect_until_up"]

# How long a robust connection (shared by the executor's handlers) waits between
# attempts to reconnect after a loss.
RECONNECT_INTERVAL = 1.0

# aio-pika holds a channel's lock until each publish frame is written to the socket,
# so one channel writes one publish at a time; a few channels keep several in the
# write path while their confirms come back pipelined.
PUBLISH_CHANNELS = 4


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
        self._topology = topology
        self._publish_timeout = publish_timeout.total_seconds()
        self._connection = KeptConnection(url, self._open_exchanges, purpose="publishing")
        self._turn = itertools.count()

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        self._connection.start()

    async def _open_exchanges(
        self, connection: AbstractConnection
    ) -> tuple[list[AbstractExchange], list[AbstractChannel]]:
        channels = [
            # Returned (unroutable) messages raise instead of vanishing after an ack.
            await connection.channel(publisher_confirms=True, on_return_raises=True)
            for _ in range(PUBLISH_CHANNELS)
        ]
        # A topology that exists with other arguments (PRECONDITION_FAILED) fails here
        # and is retried: an operator can fix it without a restart.
        exchanges = [await self._topology.declare(channel) for channel in channels]
        return exchanges, channels

    @property
    def is_ready(self) -> bool:
        """True while the connection and the publishing channels are open."""
        return self._connection.current is not None

    @property
    def is_blocked(self) -> bool:
        """True while RabbitMQ blocks this connection's publishes (connection.blocked,
        sent on a memory or disk alarm). aiormq keeps this only in a private event and
        offers no callback, so it is read there; tests/test_overload.py pins it."""
        connection = self._connection.connection
        underlay = connection.transport if connection is not None else None
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
        exchanges = self._connection.current
        if exchanges is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
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
            raise BrokerUnavailable(f"RabbitMQ did not confirm: {readable(error)}") from error

    async def close(self) -> None:
        """Close the connection, or end the attempt to make one."""
        await self._connection.close()


async def connect_until_up(url: str) -> AbstractRobustConnection:
    """A robust connection to ``url``, tried with backoff until it is up."""
    return await until_up(lambda: _connect_robust(url), "broker", BROKER_ERRORS)


async def connect_unless_stopped(
    url: str, stop: asyncio.Event | None
) -> AbstractRobustConnection | None:
    """``connect_until_up``, given up (None) when ``stop`` is set first: a SIGTERM while
    the broker is down must still stop the process."""
    return await unless_stopped(connect_until_up(url), stop)


async def _connect_robust(url: str) -> AbstractRobustConnection:
    connection = aio_pika.RobustConnection(URL(url), reconnect_interval=RECONNECT_INTERVAL)
    try:
        await connection.connect(timeout=OPEN_TIMEOUT)
    except BaseException:
        # Else a failed or cancelled first attempt leaves aio-pika reconnecting for ever,
        # and asyncio.run() never returns.
        await connection.close()
        raise
    return connection

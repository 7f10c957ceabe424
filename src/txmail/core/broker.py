"""Publishing to RabbitMQ with confirms, over a connection kept up by itself: the one
way txmail publishes, to its events exchange, to one of its queues, or to an exchange
of another team's.

A process starts without waiting for the broker; until the first connection is up,
and while a lost one is being re-established, publishing raises BrokerUnavailable
and ``is_ready`` is false, so callers can answer 503 instead of hanging.
"""

import asyncio
import hashlib
import itertools
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import ChannelClosed, ChannelNotFoundEntity, DeliveryError

from txmail.core.errors import BrokerUnavailable, ExchangeUnusable, NotTaken
from txmail.core.kept_connection import BROKER_ERRORS, KeptConnection
from txmail.core.metrics import PUBLISH_CONFIRM_SECONDS
from txmail.core.readable import readable
from txmail.core.topology import Topology

__all__ = ["BROKER_ERRORS", "Broker", "Outgoing", "Republishable"]

# aio-pika holds a channel's lock until each publish frame is written to the socket,
# so one channel writes one publish at a time; a few channels keep several in the
# write path while their confirms come back pipelined.
PUBLISH_CHANNELS = 4

# Outgoing.exchange for the default exchange: the routing key names a queue of ours.
TO_QUEUE = ""


class Republishable(Protocol):
    """A message received, as much of it as a copy needs: a delivery from a Consumer
    (txmail.core.consumer.Received) or one aio-pika got from a queue (``txmail dlq``)."""

    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, Any] | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def content_type(self) -> str | None: ...


class Event(Protocol):
    """An event of ours on the wire (txmail.core.events): JSON, with its routing key."""

    @property
    def routing_key(self) -> str: ...

    def model_dump_json(self) -> str: ...


@dataclass(frozen=True)
class Outgoing:
    """One message to publish persistently, mandatory and confirmed."""

    routing_key: str
    body: bytes
    message_id: str
    type: str | None
    content_type: str | None = "application/json"
    headers: Mapping[str, Any] | None = None
    # None: txmail's events exchange; TO_QUEUE: the queue named by the routing key;
    # any other name: an exchange that must already exist (txmail declares only its own).
    exchange: str | None = None
    expiration: timedelta | None = None

    @classmethod
    def event(cls, event: Event, message_id: str, type: str) -> "Outgoing":
        """An event to publish on the events exchange as JSON."""
        return cls(event.routing_key, event.model_dump_json().encode(), message_id, type)

    @classmethod
    def again(
        cls,
        message: Republishable,
        exchange: str,
        routing_key: str,
        headers: Mapping[str, Any],
        expiration: timedelta | None = None,
    ) -> "Outgoing":
        """A received message, to publish again with ``headers`` added. The broker's own
        ``x-`` headers (x-death, delivery counts) are dropped: they would only grow with
        every republish. One without an id gets one from its body, for ``dlq replay ID``."""
        kept = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
        return cls(
            routing_key=routing_key,
            body=message.body,
            message_id=message.message_id or hashlib.sha256(message.body).hexdigest()[:32],
            type=message.type,
            content_type=message.content_type,
            headers={**kept, **headers},
            exchange=exchange,
            expiration=expiration,
        )

    def properties(self) -> aiormq.spec.Basic.Properties:
        # What aio_pika.Message would build, without the Message and its checks, which
        # add nothing here and are on the ingress's path once per postback.
        expiration = self.expiration
        return aiormq.spec.Basic.Properties(
            content_type=self.content_type,
            delivery_mode=_PERSISTENT,
            message_id=self.message_id,
            message_type=self.type,
            headers=dict(self.headers or {}),
            expiration=None if expiration is None else str(expiration // _MILLISECOND),
        )


_PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
_MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True)
class _Lane:
    """One publishing channel: aiormq's own, published on directly (aio-pika's exchange
    object adds a message object and checks per publish, and nothing we need), with
    the name of txmail's events exchange declared on it."""

    channel: aiormq.abc.AbstractChannel
    events: str


class Broker:
    def __init__(
        self, url: str, topology: Topology, publish_timeout: timedelta, say_up: bool = True
    ) -> None:
        self._topology = topology
        self._publish_timeout = publish_timeout.total_seconds()
        self._connection = KeptConnection(url, self._open_lanes, say_up, purpose="publishing")
        self._turn = itertools.count()
        # Publishes to other teams' exchanges go on a channel of their own: a missing
        # exchange closes the channel it was used on, and that must not be a lane.
        self._elsewhere: AbstractChannel | None = None
        self._opening_elsewhere = asyncio.Lock()

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        self._connection.start()

    async def wait_ready(self) -> None:
        """Return once connected and able to publish."""
        await self._connection.wait_up()

    async def _open_lanes(
        self, connection: AbstractConnection
    ) -> tuple[list[_Lane], list[AbstractChannel]]:
        channels = [await _confirming_channel(connection) for _ in range(PUBLISH_CHANNELS)]
        # A topology that exists with other arguments (PRECONDITION_FAILED) fails here
        # and is retried: an operator can fix it without a restart.
        lanes = [
            _Lane(
                await channel.get_underlay_channel(),
                (await self._topology.declare(channel)).name,
            )
            for channel in channels
        ]
        return lanes, channels

    @property
    def is_ready(self) -> bool:
        """True while the connection and the publishing channels are open."""
        return self._connection.current is not None

    @property
    def connection(self) -> AbstractConnection | None:
        """The connection while it is open, for a channel to consume on (``open_channel``)
        and for what only it can tell."""
        return self._connection.connection if self.is_ready else None

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

    async def open_channel(self) -> AbstractChannel:
        """A channel of its own on the current connection (to consume on, say); the
        caller closes it. BrokerUnavailable while not connected."""
        connection = self.connection
        if connection is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        try:
            return await _confirming_channel(connection)
        except BROKER_ERRORS as error:
            raise BrokerUnavailable(f"RabbitMQ: {readable(error)}") from error

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish every message and wait until the broker confirmed each one.

        Raises NotTaken when the broker answered but did not take one (unroutable, or
        refused by a full queue), ExchangeUnusable when another team's exchange is
        missing or refuses us, and BrokerUnavailable when any was not confirmed in
        time. Some may have been stored all the same, which is why every message
        carries an id that makes a republish harmless.
        """
        lanes = self._connection.current
        if lanes is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        started = time.perf_counter()
        publishes = [self._publishing(m, lanes) for m in messages]
        try:
            async with asyncio.timeout(self._publish_timeout):
                if len(publishes) == 1:
                    await publishes[0]  # most requests carry one event: spare gather's task
                else:
                    await asyncio.gather(*publishes)
        except DeliveryError as error:  # returned (unroutable) or nacked
            raise NotTaken(f"RabbitMQ did not take it: {readable(error)}") from error
        except BROKER_ERRORS as error:
            raise BrokerUnavailable(f"RabbitMQ did not confirm: {readable(error)}") from error
        PUBLISH_CONFIRM_SECONDS.observe(time.perf_counter() - started)

    def _publishing(self, message: Outgoing, lanes: Sequence[_Lane]) -> Awaitable[Any]:
        if message.exchange is not None and message.exchange != TO_QUEUE:
            return self._publish_elsewhere(message)
        lane = lanes[next(self._turn) % len(lanes)]
        exchange = lane.events if message.exchange is None else TO_QUEUE
        return _publish_on(lane.channel, exchange, message)

    async def _publish_elsewhere(self, message: Outgoing) -> None:
        assert message.exchange is not None  # noqa: S101 -- _publishing sends only those
        async with self._opening_elsewhere:
            if self._elsewhere is None or self._elsewhere.is_closed:
                self._elsewhere = await self.open_channel()
            channel = await self._elsewhere.get_underlay_channel()
        try:
            await _publish_on(channel, message.exchange, message)
        except ChannelNotFoundEntity as error:
            raise ExchangeUnusable(f"does not exist: {readable(error)}") from error
        except ChannelClosed as error:  # no permission, an internal exchange
            raise ExchangeUnusable(f"refused the publish: {readable(error)}") from error

    async def close(self) -> None:
        """Close the connection, or end the attempt to make one."""
        await self._connection.close()


def _publish_on(
    channel: aiormq.abc.AbstractChannel, exchange: str, message: Outgoing
) -> Awaitable[Any]:
    # On a channel opened with on_return_raises, an unroutable message raises
    # DeliveryError (PublishError) as a nack does.
    return channel.basic_publish(
        message.body,
        exchange=exchange,
        routing_key=message.routing_key,
        properties=message.properties(),
        mandatory=True,
    )


async def _confirming_channel(connection: AbstractConnection) -> AbstractChannel:
    # Returned (unroutable) messages raise instead of vanishing after an ack.
    return await connection.channel(publisher_confirms=True, on_return_raises=True)

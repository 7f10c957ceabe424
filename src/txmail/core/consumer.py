"""Consuming one queue over a connection of its own, resumed by itself after each loss.

``is_consuming`` is the fact readiness and the tracker's progress rely on: true only
between the broker's consume-ok and the loss of the channel or connection.

Deliveries are taken on aiormq's channel directly, as publishes are (broker.py):
aio-pika's message object copies every property through a guarded ``__setattr__`` and
runs each delivery in a task of its own on top of aiormq's, which was a large share of
a consumer's CPU and gives nothing txmail reads.
"""

from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from datetime import datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage

from txmail.core.kept_connection import BROKER_ERRORS, CLOSE_TIMEOUT, KeptConnection

# Declares what the queue needs on the channel (the queue itself included).
Prepare = Callable[[AbstractChannel], Awaitable[object]]
OnMessage = Callable[["Received"], Awaitable[None]]

_NO_HEADERS: Mapping[str, Any] = {}


class Received:
    """One delivery, read where aiormq decoded it, and settled on the channel it came on.

    Its header values are pamqp's, as aio-pika handed them over (it copies the table as
    it is): long strings are ``str``, byte arrays ``bytes``, tables ``dict``. A delivery
    is settled once: a second ack, nack or reject does nothing, as the broker closes a
    channel that settles a tag twice, and with it every delivery in hand on it. Settling
    on a channel that closed since raises one of BROKER_ERRORS; the broker has put the
    delivery back in the queue already.
    """

    __slots__ = ("_delivered", "_settled")

    def __init__(self, delivered: DeliveredMessage) -> None:
        self._delivered = delivered
        self._settled = False

    @property
    def body(self) -> bytes:
        return self._delivered.body

    @property
    def headers(self) -> Mapping[str, Any]:
        return self._delivered.header.properties.headers or _NO_HEADERS

    @property
    def type(self) -> str | None:
        return self._delivered.header.properties.message_type or None

    @property
    def message_id(self) -> str | None:
        return self._delivered.header.properties.message_id or None

    @property
    def content_type(self) -> str | None:
        return self._delivered.header.properties.content_type

    @property
    def timestamp(self) -> datetime | None:
        return self._delivered.header.properties.timestamp

    @property
    def routing_key(self) -> str | None:
        return self._delivered.routing_key

    @property
    def redelivered(self) -> bool:
        return bool(self._delivered.redelivered)

    @property
    def delivery_tag(self) -> int | None:
        return self._delivered.delivery_tag

    async def ack(self, multiple: bool = False) -> None:
        """Ack this delivery, or with ``multiple`` every one up to it on its channel."""
        if (tag := self._settling()) is not None:
            await self._delivered.channel.basic_ack(tag, multiple=multiple)

    async def nack(self, requeue: bool = True) -> None:
        if (tag := self._settling()) is not None:
            await self._delivered.channel.basic_nack(tag, requeue=requeue)

    async def reject(self, requeue: bool = False) -> None:
        if (tag := self._settling()) is not None:
            await self._delivered.channel.basic_reject(tag, requeue=requeue)

    def _settling(self) -> int | None:
        """The tag to settle, or None when it was settled already."""
        if self._settled:
            return None
        self._settled = True
        return self._delivered.delivery_tag


class Consumer:
    def __init__(
        self, url: str, queue: str, prefetch: int, prepare: Prepare, on_message: OnMessage
    ) -> None:
        self._queue = queue
        self._prefetch = prefetch
        self._prepare = prepare
        self._on_message = on_message
        self._connection = KeptConnection(url, self._consume, queue=queue)

    @property
    def is_consuming(self) -> bool:
        return self._connection.current is not None

    @property
    def times_up(self) -> int:
        """How many times consuming (re)started: a change means deliveries may be new."""
        return self._connection.times_up

    def start(self) -> None:
        """Consume in the background, and again after every loss; returns at once."""
        self._connection.start()

    async def stop_consuming(self) -> None:
        """Take no more deliveries; the channel stays open to settle those in hand."""
        consuming = self._connection.current
        await self._connection.stop_reconnecting()
        if consuming is not None:
            channel, tag = consuming
            # Bounded: a broker that went away cannot answer, and SIGTERM must stop.
            with suppress(*BROKER_ERRORS):
                await channel.basic_cancel(tag, timeout=CLOSE_TIMEOUT)

    async def close(self) -> None:
        """Close the connection: what was delivered and not settled goes back to the queue."""
        await self._connection.close()

    async def _consume(
        self, connection: AbstractConnection
    ) -> tuple[tuple[aiormq.abc.AbstractChannel, str], list[AbstractChannel]]:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        await self._prepare(channel)
        underlay = await channel.get_underlay_channel()
        # The broker cancels a consumer whose queue was deleted (or moved, in a cluster):
        # the connection is then opened again, and the queue declared again.
        underlay.on_consumer_cancel_callbacks.add(lambda _: self._connection.reopen())
        consume_ok = await underlay.basic_consume(self._queue, self._deliver, no_ack=False)
        tag = consume_ok.consumer_tag
        assert tag is not None  # noqa: S101 -- the broker names the consumer in consume-ok
        return (underlay, tag), [channel]

    async def _deliver(self, delivered: DeliveredMessage) -> None:
        # Run by aiormq in a task of its own per delivery.
        await self._on_message(Received(delivered))

"""Consuming one queue over a connection of its own, resumed by itself after each loss.

``is_consuming`` is the fact readiness and the tracker's progress rely on: true only
between the broker's consume-ok and the loss of the channel or connection.
"""

from collections.abc import Awaitable, Callable
from contextlib import suppress

from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from txmail.core.kept_connection import BROKER_ERRORS, CLOSE_TIMEOUT, KeptConnection

# Declares what the queue needs on the channel, and returns the queue.
Prepare = Callable[[AbstractChannel], Awaitable[AbstractQueue]]
OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]


class Consumer:
    def __init__(
        self, url: str, queue: str, prefetch: int, prepare: Prepare, on_message: OnMessage
    ) -> None:
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
            queue, tag = consuming
            # Bounded: a broker that went away cannot answer, and SIGTERM must stop.
            with suppress(*BROKER_ERRORS):
                await queue.cancel(tag, timeout=CLOSE_TIMEOUT)

    async def close(self) -> None:
        """Close the connection: what was delivered and not settled goes back to the queue."""
        await self._connection.close()

    async def _consume(
        self, connection: AbstractConnection
    ) -> tuple[tuple[AbstractQueue, str], list[AbstractChannel]]:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        queue = await self._prepare(channel)
        tag = await queue.consume(self._on_message)
        # The broker cancels a consumer whose queue was deleted (or moved, in a cluster):
        # the connection is then opened again, and the queue declared again.
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(lambda _: self._connection.reopen())
        return (queue, tag), [channel]

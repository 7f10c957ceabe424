"""Deliveries buffered by the consumer and handed out in batches.

A batch is whatever arrived, up to ``size`` messages, and waits for more at most until
``wait`` after its oldest delivery arrived: one store transaction per batch is what
makes the worker fast, and the wait keeps a lone postback from waiting long for
company. Deliveries that arrived while the previous batch was being applied have
waited already: they go at once.
"""

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, size: int, wait: float) -> None:
        self._size = size
        self._wait = wait
        # Each delivery with when it arrived, on the event loop's clock.
        self._buffer: deque[tuple[float, T]] = deque()
        self._arrived = asyncio.Event()

    async def put(self, delivery: T) -> None:
        self._buffer.append((asyncio.get_running_loop().time(), delivery))
        self._arrived.set()

    def oldest(self) -> T | None:
        """The delivery that waits longest, or None when none waits."""
        return self._buffer[0][1] if self._buffer else None

    def waiting(self) -> Iterator[T]:
        return (delivery for _, delivery in self._buffer)

    async def next_batch(self, idle_timeout: float) -> list[T]:
        """The next batch, or an empty list when nothing arrived within ``idle_timeout``."""
        if not self._buffer:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), idle_timeout)
            except TimeoutError:
                return []
        loop = asyncio.get_running_loop()
        until = self._buffer[0][0] + self._wait
        while len(self._buffer) < self._size and (remaining := until - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        count = min(self._size, len(self._buffer))
        return [self._buffer.popleft()[1] for _ in range(count)]

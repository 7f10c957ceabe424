"""Running a service's main coroutine on uvloop: its event loop and transports cost a
fraction of asyncio's per request and per AMQP frame (bench/RESULTS.md)."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # a platform uvloop does not build on: asyncio's own loop
    uvloop = None  # type: ignore[assignment]


def run(main: Coroutine[Any, Any, T]) -> T:
    """What ``asyncio.run(main)`` does, on uvloop where it is installed."""
    if uvloop is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)

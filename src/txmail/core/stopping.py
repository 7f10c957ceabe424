"""Stopping cleanly: SIGTERM sets an event; waits end early when it is set."""

import asyncio
import contextlib
import signal
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: finish what is in hand, then stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less when stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event | None) -> T | None:
    """The result of ``work``, or None when ``stop`` is set first (``work`` is then
    cancelled): a SIGTERM must end a wait for something that may never come."""
    if stop is None:
        return await work
    working = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not working.done():
            working.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await working
    return None if working.cancelled() else working.result()

"""Stopping cleanly: SIGTERM sets an event; waits end early when it is set."""

import asyncio
import contextlib
import signal


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

"""Wait on a condition with a deadline instead of sleeping and hoping."""

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    what: str = "",
) -> None:
    """Poll ``condition`` every 20 ms until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    failure = f"timed out after {timeout}s waiting for {what or condition}"
    while True:
        result = condition()
        if not isinstance(result, bool):
            # A check that hangs (a request nobody answers) fails at the deadline too.
            try:
                result = await asyncio.wait_for(result, max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                raise AssertionError(failure) from None
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        await asyncio.sleep(0.02)

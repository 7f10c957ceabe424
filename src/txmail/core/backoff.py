"""Trying again until something is up: capped exponential backoff with jitter, and one
log line per failed attempt saying which attempt it was and how long until the next.

Jitter spreads the reconnections of many processes after a broker or database restart.
"""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never
from tenacity.wait import wait_exponential, wait_random

from txmail.core.readable import readable

log = structlog.get_logger(__name__)

T = TypeVar("T")

FIRST_WAIT = 0.5
LONGEST_WAIT = 30.0
JITTER = 1.0

# 0.5 s, 1 s, 2 s, ... up to 29 s, each plus up to 1 s at random.
BACKOFF = wait_exponential(multiplier=FIRST_WAIT, max=LONGEST_WAIT - JITTER) + wait_random(
    0, JITTER
)


def _log_failure(what: str, context: dict[str, Any]) -> Callable[[RetryCallState], None]:
    def log_it(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            f"{what} not reachable, retrying",
            attempt=state.attempt_number,
            retry_in=f"{wait:.1f}s",
            error=readable(error) if error else None,
            **context,
        )

    return log_it


async def until_up(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    errors: tuple[type[BaseException], ...],
    **context: Any,
) -> T:
    """``attempt()`` again after each of ``errors`` until it returns. ``context`` goes
    into each log line. Cancelling ends a wait or an attempt in progress at once (see
    ``txmail.core.stopping.unless_stopped``)."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=BACKOFF,
        stop=stop_never,
        before_sleep=_log_failure(what, context),
        reraise=True,
    )
    async for trying in retrying:
        with trying:
            return await attempt()
    raise AssertionError("unreachable: tenacity retries for ever")  # pragma: no cover

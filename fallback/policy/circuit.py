"""A circuit breaker per handler, so a provider that is down is not hammered.

Closed: calls go through; ``failures_to_open`` transient failures in a row open it.
Open: no calls for ``open_for``; requests take the retry path instead.
Half-open: after that, one call is let through as a probe: success closes the
circuit, failure opens it again for another ``open_for``.

Per executor process: each replica learns a provider is down on its own, which costs
at most ``failures_to_open`` calls per replica.
"""

import time
from collections.abc import Callable
from datetime import timedelta
from enum import StrEnum

import structlog

from txmail.core.durations import format_duration

log = structlog.get_logger(__name__)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """The circuit of the handler ``name``. It opens and closes with a warning: both are
    worth an alert (a provider down, then back)."""

    def __init__(
        self,
        name: str,
        failures_to_open: int,
        open_for: timedelta,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._failures_to_open = failures_to_open
        self._open_for = open_for
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._probing or self._clock() - self._opened_at < self._open_for.total_seconds():
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    def try_call(self) -> bool:
        """May the handler be called now? In half-open state, only the first asker may."""
        state = self.state
        if state is CircuitState.HALF_OPEN:
            self._probing = True
            return True
        return state is CircuitState.CLOSED

    def record_success(self) -> None:
        if self._opened_at is not None:
            log.warning("circuit closed", handler=self._name, after_failures=self._failures)
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def abandon_call(self) -> None:
        """The call was cancelled before it said anything: let another probe try."""
        self._probing = False

    def record_failure(self, detail: str) -> None:
        """A transient failure; ``detail`` says what it was, for the log when it opens."""
        self._failures += 1
        if not (self._probing or self._failures >= self._failures_to_open):
            return
        # Calls that were under way when it opened may still fail: one line per change.
        if self._probing or self._opened_at is None:
            log.warning(
                "circuit opened",
                handler=self._name,
                failures_in_a_row=self._failures,
                probe_failed=self._probing,
                open_for=format_duration(self._open_for),
                reason=detail,
            )
        self._opened_at = self._clock()
        self._probing = False


class Circuits:
    """One breaker per handler name, made on first use."""

    def __init__(self, failures_to_open: int, open_for: timedelta) -> None:
        self._failures_to_open = failures_to_open
        self._open_for = open_for
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, handler: str) -> CircuitBreaker:
        if handler not in self._breakers:
            self._breakers[handler] = CircuitBreaker(
                handler, self._failures_to_open, self._open_for
            )
        return self._breakers[handler]

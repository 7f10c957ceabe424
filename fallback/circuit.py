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


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failures_to_open: int,
        open_for: timedelta,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures_to_open = failures_to_open
        self._open_for = open_for.total_seconds()
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._probing or self._clock() - self._opened_at < self._open_for:
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
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def abandon_call(self) -> None:
        """The call was cancelled before it said anything: let another probe try."""
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._failures_to_open:
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
            self._breakers[handler] = CircuitBreaker(self._failures_to_open, self._open_for)
        return self._breakers[handler]

"""Overload at the door: answer 503 at once rather than make every request wait longer.

When RabbitMQ confirms more slowly than postbacks arrive, publishes pile up in flight
and each request waits longer, until they all time out together. Past a bound of
publishes in flight (TXMAIL_MAX_PUBLISHES_IN_FLIGHT), and while RabbitMQ blocks
publishers (connection.blocked, on a memory or disk alarm), the ingress refuses at
once with ``Retry-After``: Braze retries later, and what is in flight stays fast.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from aiohttp import web

from txmail.core.broker import Broker
from txmail.core.http import json_error

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = 1


class PublishGate:
    def __init__(self, broker: Broker, max_in_flight: int) -> None:
        self._broker = broker
        self._max_in_flight = max_in_flight
        self.in_flight = 0  # messages published and not yet confirmed (or failed)
        self._refusing = False

    def refusal(self) -> web.Response | None:
        """The 503 to answer instead of publishing now, or None when there is room.

        A request is let in while the bound is not reached, however many events it
        carries, so one request past the bound still goes through: the bound can be
        passed by at most one request's events (TXMAIL_MAX_EVENTS_PER_REQUEST).
        """
        why = None
        if self._broker.is_blocked:
            why = "RabbitMQ is blocking publishers (a memory or disk alarm)"
        elif self.in_flight >= self._max_in_flight:
            why = f"{self.in_flight} events are already waiting for RabbitMQ's confirms"
        # One line when refusing starts and one when it ends, not one per request:
        # an overloaded ingress has better things to do than log thousands a second.
        if why is not None and not self._refusing:
            log.warning("overloaded: answering 503 until RabbitMQ catches up", reason=why)
        elif why is None and self._refusing:
            log.info("no longer overloaded")
        self._refusing = why is not None
        return None if why is None else overloaded(why)

    @contextmanager
    def holding(self, count: int) -> Iterator[None]:
        """Count ``count`` messages as in flight while the block runs."""
        self.in_flight += count
        try:
            yield
        finally:
            self.in_flight -= count


def overloaded(why: str) -> web.Response:
    response = json_error(503, "overloaded", f"{why}; retry in a moment")
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response

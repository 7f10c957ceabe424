"""The executor's outgoing side: attempt events, retries and parked requests, confirmed.

Everything one request's outcome needs is published together, and the request is
acked only after the broker confirmed all of it (DESIGN.md, invariant 1).
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from txmail.broker import BROKER_ERRORS, Outgoing
from txmail.errors import BrokerUnavailable
from txmail.events import FALLBACK_ATTEMPT_TYPE, FallbackAttempt


@dataclass(frozen=True)
class QueuedMessage:
    """A message for one queue of ours (a delay queue, the parking queue, the fallback
    queue), sent through the default exchange so it reaches that queue only."""

    queue: str
    message: aio_pika.Message


def attempt_message(attempt: FallbackAttempt) -> Outgoing:
    return Outgoing(
        routing_key=attempt.routing_key,
        body=attempt.model_dump_json().encode(),
        message_id=attempt.event_id,
        type=FALLBACK_ATTEMPT_TYPE,
    )


class ConfirmedPublisher:
    def __init__(self, channel: AbstractChannel, events: AbstractExchange, timeout: timedelta):
        self._channel = channel
        self._events = events
        self._timeout = timeout.total_seconds()

    async def publish(
        self, attempts: Sequence[FallbackAttempt], queued: Sequence[QueuedMessage] = ()
    ) -> None:
        """Publish all of it; raise BrokerUnavailable unless every part was confirmed."""
        try:
            await asyncio.gather(
                *(
                    self._events.publish(
                        attempt_message(a).to_message(),
                        a.routing_key,
                        mandatory=True,
                        timeout=self._timeout,
                    )
                    for a in attempts
                ),
                *(
                    self._channel.default_exchange.publish(
                        q.message, q.queue, mandatory=True, timeout=self._timeout
                    )
                    for q in queued
                ),
            )
        except BROKER_ERRORS as error:
            raise BrokerUnavailable(f"RabbitMQ did not confirm: {error!r}") from error

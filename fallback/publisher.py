"""The executor's outgoing side: attempt events, retries and parked requests, confirmed.

Everything one request's outcome needs is published together, and the request is
acked only after the broker confirmed all of it (invariant 1, docs/architecture.md).
"""

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from txmail.core.broker import BROKER_ERRORS, Outgoing
from txmail.core.errors import BrokerUnavailable
from txmail.core.events import FALLBACK_ATTEMPT_TYPE, FallbackAttempt
from txmail.core.readable import readable


@dataclass(frozen=True)
class QueuedMessage:
    """A message for one queue of ours (a delay queue, the parking queue, the fallback
    queue), sent through the default exchange so it reaches that queue only."""

    queue: str
    message: aio_pika.Message


def with_new_headers(
    message: AbstractIncomingMessage, headers: dict[str, Any], expiration: timedelta | None = None
) -> aio_pika.Message:
    """The same request, to publish again with new progress headers. The broker's own
    ``x-`` headers (x-death, delivery counts) are dropped: they would only grow with
    every retry. A message without an id gets one from its body, for ``dlq replay ID``."""
    kept = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
    return aio_pika.Message(
        message.body,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id or hashlib.sha256(message.body).hexdigest()[:32],
        type=message.type,
        headers={**kept, **headers},
        expiration=expiration,
    )


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
            raise BrokerUnavailable(f"RabbitMQ did not confirm: {readable(error)}") from error

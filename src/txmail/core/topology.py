"""Every exchange and queue txmail uses, named from the namespace, declared idempotently.

Whichever process starts first declares them; the others find them as they are. All
queues are quorum queues (replicated, durable) that dead-letter what cannot be
processed after ``DELIVERY_LIMIT`` redeliveries (the first delivery plus that many
more), so nothing loops for ever.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from txmail.core.durations import format_duration

DELIVERY_LIMIT: Final = 5


@dataclass(frozen=True)
class Topology:
    namespace: str
    # The fallback executor's retry schedule: one delay queue per distinct delay.
    # Processes that never retry fallbacks leave it empty and declare none.
    fallback_retry_delays: tuple[timedelta, ...] = ()

    @property
    def events_exchange(self) -> str:
        """Topic exchange every event is published on."""
        return f"{self.namespace}.events"

    @property
    def tracker_queue(self) -> str:
        """What the workers consume: postbacks, registered sends, fallback attempts."""
        return f"{self.namespace}.tracker"

    @property
    def fallback_queue(self) -> str:
        """What the fallback executor consumes: every fallback request."""
        return f"{self.namespace}.fallback"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dead-letter"

    @property
    def dead_letter_queue(self) -> str:
        """Where a message lands that could not be processed within the delivery limit."""
        return f"{self.namespace}.dead-letter"

    # --- fallback executor: parking queue and retry delay queues ---

    @property
    def fallback_parking_queue(self) -> str:
        """Fallback requests that failed for good, with the reason in their headers."""
        return f"{self.namespace}.fallback.parked"

    def fallback_delay_queue(self, delay: timedelta) -> str:
        """A queue whose messages wait ``delay`` and then go back to the fallback queue.

        Named by its delay, so a changed schedule declares new queues instead of
        clashing with the fixed TTL of the old ones (which drain by themselves).
        """
        return f"{self.namespace}.fallback.delay.{format_duration(delay)}"

    @property
    def fallback_delay_queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(map(self.fallback_delay_queue, self.fallback_retry_delays)))

    def fallback_delay_arguments(self, delay: timedelta) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": max(1, round(delay.total_seconds() * 1000)),
            # Expired messages go through the default exchange straight to the fallback
            # queue only, kept until it confirmed them.
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.fallback_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    @property
    def exchanges(self) -> tuple[str, ...]:
        return (self.events_exchange, self.dead_letter_exchange)

    @property
    def queues(self) -> tuple[str, ...]:
        return (
            self.tracker_queue,
            self.fallback_queue,
            self.dead_letter_queue,
            self.fallback_parking_queue,
            *self.fallback_delay_queues,
        )

    def quorum_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            # At-least-once dead-lettering: a message is kept until the dead-letter
            # queue confirmed it, so parking never loses one.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    async def declare(self, channel: AbstractChannel) -> AbstractExchange:
        """Declare everything (a no-op where it exists) and return the events exchange."""
        events = await channel.declare_exchange(
            self.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        dead = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(
            self.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead)
        tracker = await channel.declare_queue(
            self.tracker_queue, durable=True, arguments=self.quorum_arguments()
        )
        # health.#: the workers' own changes of Braze's health come back as a record.
        for pattern in ("postback.#", "send.#", "fallback.result.#", "health.#"):
            await tracker.bind(events, routing_key=pattern)
        fallback = await channel.declare_queue(
            self.fallback_queue, durable=True, arguments=self.quorum_arguments()
        )
        await fallback.bind(events, routing_key="fallback.request.#")
        # Nothing consumes the parking queue: ops list and replay it. Should a broker's
        # default delivery limit ever drop a message listed too often, it is
        # dead-lettered to the shared dead-letter queue instead of lost.
        await channel.declare_queue(
            self.fallback_parking_queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        for delay in dict.fromkeys(self.fallback_retry_delays):
            await channel.declare_queue(
                self.fallback_delay_queue(delay),
                durable=True,
                arguments=self.fallback_delay_arguments(delay),
            )
        return events

    async def delete(self, channel: AbstractChannel) -> None:
        """Remove every queue and exchange of this namespace (tests, and uninstalling)."""
        for queue in self.queues:
            await channel.queue_delete(queue)
        for exchange in self.exchanges:
            await channel.exchange_delete(exchange)

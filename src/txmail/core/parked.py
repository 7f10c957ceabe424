"""What the API's console may do with parked fallback requests, without knowing how.

Parking is the fallback executor's business (``txmail.fallback``), the console the
workers' (``txmail.workers``), and the services never import each other: the command
(``txmail.cli``) builds the fallback side's implementation and hands it to the API.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class ParkedFallback:
    """One parked fallback request, as a person needs to see it before replaying it."""

    message_id: str
    idempotency_key: str | None
    trigger: str | None
    external_send_id: str | None
    reason: str
    parked_at: datetime | None
    attempts: int
    failed_handlers: tuple[str, ...]

    @property
    def ids(self) -> set[str]:
        """What a replay accepts for it: the message id or the idempotency key."""
        return {self.message_id, *([self.idempotency_key] if self.idempotency_key else [])}


@dataclass(frozen=True)
class ParkedListing:
    total: int  # how many the parking queue holds
    requests: list[ParkedFallback]  # the first of them, in queue order


class ParkedFallbacks(Protocol):
    """Both raise BrokerUnavailable when RabbitMQ cannot be reached."""

    async def count(self) -> int:
        """How many are parked, without reading any."""
        ...

    async def listing(self, limit: int) -> ParkedListing:
        """How many are parked, and the first ``limit`` of them."""
        ...

    async def replay(self, ids: set[str] | None) -> list[ParkedFallback]:
        """Put the parked requests with these ids (every one for None) back on the
        fallback queue, as ``txmail dlq replay`` does; returns those replayed."""
        ...

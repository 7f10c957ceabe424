"""What every state store does, whatever the database behind it."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from txmail.core.errors import TxmailError
from txmail.core.events import FallbackRequest
from txmail.workers.state import Event, Outcome, Registered, StatusSeen
from txmail.workers.watermark import WorkerProgress

if TYPE_CHECKING:  # the health store builds on this module's types
    from txmail.workers.health.store import HealthStore


class StoreUnavailable(TxmailError):
    """The database cannot be reached or is busy; retry the same work later."""


class NotMigrated(StoreUnavailable):
    """A reader found no txmail tables, or older ones: a worker or `txmail migrate`
    has to create them, readers never do."""


@dataclass(frozen=True)
class TrackedEvent:
    """One event for a message's timeline, and what the core merges from it (if anything)."""

    event_id: str
    message_key: str
    kind: str  # the AMQP type: postback, send_registration, fallback_attempt
    label: str  # the postback status, "registered", or the attempt's outcome
    received_at: datetime
    body: str  # the event's JSON, as it arrived
    core: Event | None  # None for fallback attempts: they do not change the state


@dataclass(frozen=True)
class PendingRequest:
    """A decided fallback that still has to be published."""

    message_key: str
    request: FallbackRequest


class TimelineEntry(BaseModel):
    event_id: str
    kind: str
    label: str
    received_at: datetime
    body: Any


class DecisionView(BaseModel):
    trigger: str
    decided_at: datetime
    # The deadline a timeout was decided on (None for a failure, or a decision older
    # than this field): a `delivered_at` by then makes it a premature fallback.
    deadline: datetime | None
    published_at: datetime | None
    request: FallbackRequest | None


class MessageView(BaseModel):
    """What the API and ``txmail status`` show about one message."""

    key: str
    dispatch_id: str | None
    external_send_id: str | None
    campaign_api_id: str | None
    outcome: Outcome
    reason: str | None
    deadline: datetime | None
    # The learned ("auto") delivery timeout its deadline was armed with, if any.
    learned_timeout: timedelta | None = None
    statuses: dict[str, StatusSeen]
    registration: Registered | None
    decision: DecisionView | None
    timeline: list[TimelineEntry]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoreCounts:
    messages: int
    events: int
    decisions: int
    unpublished: int
    pending_deadlines: int
    # Timeouts decided before a `delivered` Braze had stamped in time arrived.
    premature_fallbacks: int


@dataclass(frozen=True)
class Tally:
    """What the metrics count in the store: messages by outcome, deadlines armed."""

    outcomes: dict[str, int]
    pending_deadlines: int


# --- What the console and its JSON endpoints count and list --------------------------


@dataclass(frozen=True)
class MessageCount:
    """Messages created in a window with this outcome and fallback trigger (or none)."""

    outcome: str
    trigger: str | None
    count: int


@dataclass(frozen=True)
class AttemptCount:
    handler: str | None  # None: no rule matched, so no handler ran
    outcome: str
    count: int


@dataclass(frozen=True)
class LatestAttempt:
    """A handler's most recent fallback attempt, as the executor reported it."""

    handler: str
    outcome: str
    detail: str
    at: datetime


@dataclass(frozen=True)
class PendingDeadlines:
    count: int
    earliest: datetime | None


class FailureSummary(BaseModel):
    """One failed message in a list of them."""

    key: str
    dispatch_id: str | None
    external_send_id: str | None
    campaign_api_id: str | None
    outcome: Outcome
    reason: str | None
    trigger: str | None
    updated_at: datetime


@dataclass(frozen=True)
class Delivery:
    """Braze's own `sent_at` and `delivered_at` of a delivered message, as written."""

    sent_at: str | None
    delivered_at: str | None


class Store(Protocol):
    # Braze's health, in the same database; ``apply`` and ``claim_due`` record what
    # their batch tells about it in their own transaction.
    health: "HealthStore"

    async def apply(self, events: Sequence[TrackedEvent], now: datetime) -> list[PendingRequest]:
        """Record events and merge them into their messages in one transaction.

        Returns the fallback decisions this made; they are already recorded, so a
        publish that fails is retried by ``claim_unpublished``.
        """

    async def claim_due(
        self, now: datetime, limit: int, due_by: datetime | None = None
    ) -> list[PendingRequest]:
        """Decide timeouts for up to ``limit`` deadlines passed by ``due_by`` (default
        ``now``); each claimed by one caller only."""

    async def report_progress(
        self, progress: WorkerProgress, forget_before: datetime
    ) -> list[WorkerProgress]:
        """Record this worker's progress, delete rows last written before
        ``forget_before``, and return every worker's (this one's included)."""

    async def claim_unpublished(self, now: datetime, limit: int) -> list[PendingRequest]:
        """Decisions whose publish is overdue, leased to this caller for a while."""

    async def mark_published(self, message_keys: Sequence[str], now: datetime) -> None: ...

    async def purge(self, created_before: datetime, limit: int) -> int:
        """Delete up to ``limit`` settled messages created before the cut, with their events."""

    async def find(
        self, *, dispatch_id: str | None = None, external_send_id: str | None = None
    ) -> MessageView | None:
        """Raises NotMigrated when the database has no txmail tables, or older ones."""

    async def counts(self) -> StoreCounts: ...

    # Reads for the console; each raises NotMigrated as ``find`` does.

    async def message_counts(self, since: datetime) -> list[MessageCount]:
        """Messages created since, counted by outcome and fallback trigger."""

    async def attempt_counts(self, since: datetime) -> list[AttemptCount]:
        """Fallback attempts reported since, counted by handler and outcome."""

    async def latest_attempts(self, since: datetime) -> list[LatestAttempt]:
        """Each handler's latest attempt reported since."""

    async def pending_deadlines(self) -> PendingDeadlines: ...

    async def recent_failures(
        self, limit: int, campaign_api_id: str | None = None, trigger: str | None = None
    ) -> list[FailureSummary]:
        """The latest aborted, bounced and timed-out messages, last changed first."""

    async def deliveries(self, since: datetime, limit: int) -> list[Delivery]:
        """Braze's times of up to ``limit`` delivered messages created since, newest first."""

    async def tally(self) -> Tally:
        """One pass over the messages, for the metrics."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers (NotMigrated when it has
        no txmail tables, or older ones)."""

    async def close(self) -> None: ...

"""The workers' metrics: events applied, how far behind Braze, what was decided.

The gauges that need a query (messages by outcome, deadlines pending) are counted by
each worker's sweeper every TALLY_EVERY_SWEEPS sweeps (15 s with the default
TXMAIL_SWEEP_INTERVAL), in one query, whatever the load: a scrape never touches the
store.
"""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from txmail.core.events import (
    FALLBACK_ATTEMPT_TYPE,
    HEALTH_CHANGE_TYPE,
    POSTBACK_TYPE,
    SEND_REGISTRATION_TYPE,
    Trigger,
)
from txmail.core.metrics import LATENCY_BUCKETS
from txmail.workers.state import Message, Outcome, braze_sending_time

if TYPE_CHECKING:  # the store records what these count: it imports this module
    from txmail.workers.store.protocol import PendingRequest, TrackedEvent

REGISTRY = CollectorRegistry()

TALLY_EVERY_SWEEPS = 15

# Braze's times to txmail's, and Braze's own sending: seconds to hours.
SLOW_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

EVENTS_APPLIED = Counter(
    "txmail_events_applied_total",
    "Events applied to the store and acked, by kind "
    "(postback, send_registration, fallback_attempt).",
    ["kind"],
    registry=REGISTRY,
)
EVENTS_REFUSED = Counter(
    "txmail_events_refused_total",
    "Deliveries the tracker could not apply: dead-lettered (not the contract) or "
    "requeued (the store kept failing on it).",
    ["settlement"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "txmail_tracker_batch_size",
    "Deliveries per batch the tracker applies in one store transaction.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "txmail_tracker_batch_seconds",
    "Time to apply and settle one batch.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TRACKER_LAG = Histogram(
    "txmail_tracker_lag_seconds",
    "From Braze's own time of a postback (its <status>_at) to its being applied.",
    buckets=SLOW_BUCKETS,
    registry=REGISTRY,
)
BRAZE_DELIVERY = Histogram(
    "txmail_braze_delivery_seconds",
    "Braze's own time from sent_at to delivered_at, as its postbacks say.",
    buckets=SLOW_BUCKETS,
    registry=REGISTRY,
)
MESSAGES = Gauge(
    "txmail_messages",
    "Messages in the store by outcome, counted every 15 sweeps.",
    ["outcome"],
    registry=REGISTRY,
)
DEADLINES_PENDING = Gauge(
    "txmail_deadlines_pending",
    "Messages with a deadline armed, counted every 15 sweeps.",
    registry=REGISTRY,
)
DEADLINES_FIRED = Counter(
    "txmail_deadlines_fired_total",
    "Deadlines this worker's sweeper claimed as passed, by trigger (timeout, not_sent).",
    ["trigger"],
    registry=REGISTRY,
)
BRAZE_HEALTH_CHANGES = Counter(
    "txmail_braze_health_changes_total",
    "Changes of Braze's health this worker judged (each is judged by one worker), by "
    "health (degraded, recovered) and scope (overall, campaign).",
    ["health", "scope"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    "txmail_fallbacks_decided_total",
    "Fallbacks decided, by trigger (aborted, bounced, timeout, not_sent).",
    ["trigger"],
    registry=REGISTRY,
)

_SENT_DELIVERED = frozenset({"sent", "delivered"})
_APPLIED = {
    kind: EVENTS_APPLIED.labels(kind)
    for kind in (POSTBACK_TYPE, SEND_REGISTRATION_TYPE, FALLBACK_ATTEMPT_TYPE, HEALTH_CHANGE_TYPE)
}
_DECIDED = {trigger: DECISIONS.labels(trigger.value) for trigger in Trigger}
_FIRED = {trigger: DEADLINES_FIRED.labels(trigger.value) for trigger in Trigger}


REFUSED_DEAD_LETTER = EVENTS_REFUSED.labels("dead_letter")
REFUSED_REQUEUE = EVENTS_REFUSED.labels("requeue")


def count_applied(event: "TrackedEvent") -> None:
    # Kinds are the tracker's message types: anything else is not the contract.
    _APPLIED[event.kind].inc()


def count_decided(decided: "Sequence[PendingRequest]") -> None:
    for pending in decided:
        _DECIDED[pending.request.trigger].inc()


def count_fired(claimed: "Sequence[PendingRequest]") -> None:
    """Deadlines the sweeper claimed: each is a decision too."""
    for pending in claimed:
        _FIRED[pending.request.trigger].inc()
    count_decided(claimed)


def observe_braze_delivery(messages: Iterable[Message], events: "Sequence[TrackedEvent]") -> None:
    """Braze's sent → delivered of each message this batch brought the second of the two
    (a redelivered event may count one twice: rare, and a histogram shrugs it off)."""
    completed = {
        e.message_key for e in events if e.kind == POSTBACK_TYPE and e.label in _SENT_DELIVERED
    }
    for message in messages:
        if message.key in completed and (took := braze_sending_time(message)) is not None:
            BRAZE_DELIVERY.observe(took.total_seconds())


def observe_lag(braze_time: datetime, applied_at: datetime) -> None:
    TRACKER_LAG.observe(max(0.0, (applied_at - braze_time).total_seconds()))


def set_tally(outcomes: dict[str, int], pending_deadlines: int) -> None:
    for outcome in Outcome:
        MESSAGES.labels(outcome.value).set(outcomes.get(outcome.value, 0))
    DEADLINES_PENDING.set(pending_deadlines)


for _health in ("degraded", "recovered"):  # shown at 0 before the first change
    for _scope in ("overall", "campaign"):
        BRAZE_HEALTH_CHANGES.labels(_health, _scope)


def count_health_change(health: str, overall: bool) -> None:
    BRAZE_HEALTH_CHANGES.labels(health, "overall" if overall else "campaign").inc()

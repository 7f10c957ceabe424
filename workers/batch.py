"""One batch of deliveries applied to the store: how to settle each, what to publish.

This is the tracker's logic without its consumer: the tracker settles the deliveries as
told and publishes the decisions, so the logic can be driven on a real store alone.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import structlog

from txmail.core.backoff import until_up
from txmail.core.events import utc_now
from txmail.core.stopping import unless_stopped
from txmail.workers.incoming import NotTheContract
from txmail.workers.store.protocol import PendingRequest, Store, StoreUnavailable, TrackedEvent

log = structlog.get_logger(__name__)

# The store being down, retried with growing waits; any other failure is a bug or bad data.
STORE_DOWN = (StoreUnavailable,)


class Settle(Enum):
    """How the tracker settles a delivery."""

    ACK = "ack"  # applied and committed
    DEAD_LETTER = "dead-letter"  # not the contract: no worker will ever process it
    # Failed for a reason we do not know (a bug): back to the queue, whose delivery
    # limit dead-letters it after a few tries, so it never blocks the messages behind it.
    REQUEUE = "requeue"
    # Stopping while the store is down: left unsettled, the broker hands it out again.
    LEAVE = "leave"


@dataclass(frozen=True)
class Settlement:
    kind: Settle
    error: Exception | None = None  # why it is dead-lettered or requeued


@dataclass
class AppliedBatch:
    settlements: list[Settlement]  # one per delivery, in the batch's order
    decided: list[PendingRequest] = field(default_factory=list)  # committed, to publish

    def acked(self) -> list[int]:
        return [i for i, s in enumerate(self.settlements) if s.kind is Settle.ACK]


class _Unexplained:
    """A store failure that is not the database being unavailable: a bug or bad data."""

    def __init__(self, error: Exception) -> None:
        self.error = error


async def apply_batch(
    store: Store, decoded: Sequence[TrackedEvent | Exception], stop: asyncio.Event
) -> AppliedBatch:
    """Apply the events of a batch (each delivery decoded, or why it is not an event) in
    one transaction; if that fails for a reason not known, one by one."""
    applied = AppliedBatch([_not_an_event(d) for d in decoded])
    accepted = [(i, d) for i, d in enumerate(decoded) if isinstance(d, TrackedEvent)]
    if not accepted:
        return applied
    decided = await _apply(store, [e for _, e in accepted], stop)
    if isinstance(decided, _Unexplained):
        log.error("batch failed; applying its messages one by one", exc_info=decided.error)
        for i, event in accepted:
            decided = await _apply(store, [event], stop)
            if decided is None:
                break  # stopping: this one and the rest are left for another worker
            applied.settlements[i] = _settlement(decided)
            if isinstance(decided, list):
                applied.decided += decided
        return applied
    for i, _ in accepted:
        applied.settlements[i] = _settlement(decided)
    if isinstance(decided, list):
        applied.decided = decided
    return applied


def _not_an_event(decoded: TrackedEvent | Exception) -> Settlement:
    if isinstance(decoded, NotTheContract):
        return Settlement(Settle.DEAD_LETTER, decoded)
    if isinstance(decoded, Exception):
        return Settlement(Settle.REQUEUE, decoded)
    return Settlement(Settle.LEAVE)  # until applied


def _settlement(decided: list[PendingRequest] | _Unexplained | None) -> Settlement:
    if decided is None:
        return Settlement(Settle.LEAVE)
    if isinstance(decided, _Unexplained):
        return Settlement(Settle.REQUEUE, decided.error)
    return Settlement(Settle.ACK)


async def _apply(
    store: Store, events: list[TrackedEvent], stop: asyncio.Event
) -> list[PendingRequest] | _Unexplained | None:
    # A store that is down is retried with growing waits, one log line each.
    applying = until_up(lambda: store.apply(events, utc_now()), "store", STORE_DOWN)
    try:
        return await unless_stopped(applying, stop)
    except Exception as error:
        return _Unexplained(error)

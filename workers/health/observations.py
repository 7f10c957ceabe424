"""What one event tells about its send's health: pure.

Each postback gives one piece of its send (the `sent` its Braze `sent_at`, the
`delivered` its `delivered_at`, a failure its time), and a timeout decision the time it
was decided. The health store merges the pieces per send, keeping the earliest of each
time and the largest lag, so that any order and any copies give the same row.
"""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from txmail.core.events import Trigger
from txmail.workers.state import FAILURES, PostbackEvent, event_time
from txmail.workers.store.protocol import PendingRequest, TrackedEvent


@dataclass(frozen=True)
class SendObservation:
    message_key: str
    campaign: str  # '' for a send without one
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    failure: str | None = None
    timed_out_at: datetime | None = None
    # How late the postback reached txmail after Braze's time of it.
    lag: timedelta | None = None


def observe_event(event: TrackedEvent) -> SendObservation | None:
    """The piece a postback gives; None for anything else, or a status not Braze's five."""
    core = event.core
    if not isinstance(core, PostbackEvent):
        return None
    status = core.postback.status
    stamped = event_time(core)  # Braze's time, never after the arrival
    observed = SendObservation(
        message_key=event.message_key,
        campaign=core.postback.campaign_api_id or "",
        lag=None if stamped is None else core.received_at - stamped,
    )
    if status == "sent":
        return replace(observed, sent_at=stamped)
    if status == "delivered":
        return replace(observed, delivered_at=stamped)
    if status in FAILURES:
        return replace(observed, failed_at=stamped or core.received_at, failure=status)
    return observed if status == "processed" else None


def observe_timeout(pending: PendingRequest) -> SendObservation | None:
    request = pending.request
    if request.trigger is not Trigger.TIMEOUT:
        return None
    return SendObservation(
        message_key=pending.message_key,
        campaign=request.campaign_api_id or "",
        timed_out_at=request.decided_at,
    )


def observe(
    events: Iterable[TrackedEvent], decided: Iterable[PendingRequest]
) -> list[SendObservation]:
    """Every piece of a batch, in message key order (concurrent writers lock in one order)."""
    pieces = [observe_event(e) for e in events] + [observe_timeout(p) for p in decided]
    return sorted((p for p in pieces if p is not None), key=lambda p: p.message_key)

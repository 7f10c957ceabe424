"""What one event tells about its send's health: pure.

Each postback gives one piece of its send (the `sent` its Braze `sent_at`, the
`delivered` its `delivered_at`, a failure its time), and a timeout decision the time it
was decided. The pieces of a send are merged, here within a batch and by the health
store with its row, keeping the earliest of each time and the largest lag, so that any
order and any copies give the same row.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from txmail.core.events import Trigger
from txmail.workers.state import FAILURES, PostbackEvent, event_time

if TYPE_CHECKING:  # the store records what these tell: it imports this module
    from txmail.workers.store.protocol import PendingRequest, TrackedEvent

T = TypeVar("T", datetime, timedelta)


# A tuple: as a frozen dataclass, one cost a sweep's claim 2 % of its Python.
class SendObservation(NamedTuple):
    message_key: str
    campaign: str  # '' for a send without one
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    failure: str | None = None
    timed_out_at: datetime | None = None
    # How late the postback reached txmail after Braze's time of it.
    lag: timedelta | None = None


def observe_event(event: "TrackedEvent") -> SendObservation | None:
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
        return observed._replace(sent_at=stamped)
    if status == "delivered":
        return observed._replace(delivered_at=stamped)
    if status in FAILURES:
        return observed._replace(failed_at=stamped or core.received_at, failure=status)
    return observed if status == "processed" else None


def observe_timeout(pending: "PendingRequest") -> SendObservation | None:
    request = pending.request
    if request.trigger is not Trigger.TIMEOUT:
        return None
    return SendObservation(
        message_key=pending.message_key,
        campaign=request.campaign_api_id or "",
        timed_out_at=request.decided_at,
    )


def _tells_something(piece: SendObservation) -> bool:
    times = (piece.sent_at, piece.delivered_at, piece.failed_at, piece.timed_out_at, piece.lag)
    return times.count(None) < len(times)  # some time known (counted in C, not a generator)


def _first(a: T | None, b: T | None) -> T | None:
    return b if a is None else a if b is None else min(a, b)


def _merged(a: SendObservation, b: SendObservation) -> SendObservation:
    lags = [lag for lag in (a.lag, b.lag) if lag is not None]
    earlier_failure = b.failed_at is not None and (a.failed_at is None or b.failed_at < a.failed_at)
    return a._replace(
        sent_at=_first(a.sent_at, b.sent_at),
        delivered_at=_first(a.delivered_at, b.delivered_at),
        failed_at=_first(a.failed_at, b.failed_at),
        failure=b.failure if earlier_failure else a.failure,
        timed_out_at=_first(a.timed_out_at, b.timed_out_at),
        lag=max(lags, default=None),
    )


def observe(
    events: Iterable["TrackedEvent"], decided: Iterable["PendingRequest"]
) -> list[SendObservation]:
    """What a batch tells, one piece per send (one statement writes a row once), in
    message key order (concurrent writers lock in one order). A piece with no time at
    all (a postback without Braze's times) tells nothing, and costs no row."""
    pieces = [observe_event(e) for e in events] + [observe_timeout(p) for p in decided]
    sends: dict[str, SendObservation] = {}
    for piece in pieces:
        if piece is not None and _tells_something(piece):
            kept = sends.get(piece.message_key)
            sends[piece.message_key] = piece if kept is None else _merged(kept, piece)
    return [sends[key] for key in sorted(sends)]

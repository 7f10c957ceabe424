"""What the console's "Now" page shows, part by part: each part is one JSON endpoint
(``/v1/stats/<part>``) and one section of the page, read by the same function.

Counts are over the messages created in the last hour and the last day (the store
indexes messages by creation), attempts over those reported in that time.
"""

import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from txmail.core.events import CIRCUIT_OPEN_DETAIL
from txmail.workers.status import placeable_time
from txmail.workers.store.protocol import Delivery, LatestAttempt, Store

WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# Braze's delivery latency is drawn hour by hour over the last day, from at most this
# many deliveries (the newest): enough for a p95, cheap for a page that refreshes.
LATENCY_BUCKET = timedelta(hours=1)
LATENCY_SAMPLE = 20_000


class Circuit(BaseModel):
    handler: str
    since: datetime  # the latest attempt, which found the circuit open
    detail: str


class PendingDeadlinesView(BaseModel):
    count: int
    earliest: datetime | None


class LatencyBucket(BaseModel):
    start: datetime
    deliveries: int
    p50_seconds: float | None
    p95_seconds: float | None


async def outcomes(store: Store, now: datetime) -> dict[str, dict[str, int]]:
    """Messages by outcome, per window."""
    return {
        window: _summed((c.outcome, c.count) for c in await store.message_counts(now - length))
        for window, length in WINDOWS.items()
    }


async def decisions(store: Store, now: datetime) -> dict[str, dict[str, int]]:
    """Fallbacks decided, by trigger, per window."""
    return {
        window: _summed(
            (c.trigger, c.count) for c in await store.message_counts(now - length) if c.trigger
        )
        for window, length in WINDOWS.items()
    }


async def attempts(store: Store, now: datetime) -> dict[str, dict[str, dict[str, int]]]:
    """Fallback attempts by handler ("(no rule)" when none matched), then by outcome."""
    result: dict[str, dict[str, dict[str, int]]] = {}
    for window, length in WINDOWS.items():
        by_handler: dict[str, dict[str, int]] = defaultdict(dict)
        for c in await store.attempt_counts(now - length):
            by_handler[c.handler or "(no rule)"][c.outcome] = c.count
        result[window] = dict(sorted(by_handler.items()))
    return result


async def circuits(store: Store, now: datetime) -> list[Circuit]:
    """Handlers whose latest attempt in the last hour found their circuit open.

    Circuit breakers live in each executor's memory; what reaches the store is the
    attempts they report, so a circuit shows here once a request found it open, and
    until that handler's next attempt (which is its probe) says otherwise."""
    return [
        Circuit(handler=a.handler, since=a.at, detail=a.detail)
        for a in await store.latest_attempts(now - WINDOWS["hour"])
        if _circuit_open(a)
    ]


def _circuit_open(attempt: LatestAttempt) -> bool:
    return CIRCUIT_OPEN_DETAIL in attempt.detail


async def deadlines(store: Store, now: datetime) -> PendingDeadlinesView:
    pending = await store.pending_deadlines()
    return PendingDeadlinesView(count=pending.count, earliest=pending.earliest)


async def latency(store: Store, now: datetime) -> list[LatencyBucket]:
    """Braze's sent→delivered time (its own `sent_at` and `delivered_at`), p50 and p95
    per hour of delivery over the last day, oldest first."""
    day = WINDOWS["day"]
    first = _floor(now - day + LATENCY_BUCKET)
    by_bucket: dict[datetime, list[float]] = {
        first + i * LATENCY_BUCKET: [] for i in range(day // LATENCY_BUCKET)
    }
    for delivery in await store.deliveries(now - day, LATENCY_SAMPLE):
        timed = _seconds(delivery)
        if timed is not None and (bucket := by_bucket.get(_floor(timed[0]))) is not None:
            bucket.append(timed[1])
    return [
        LatencyBucket(
            start=start,
            deliveries=len(seconds),
            p50_seconds=percentile(seconds, 50),
            p95_seconds=percentile(seconds, 95),
        )
        for start, seconds in by_bucket.items()
    ]


def percentile(values: Sequence[float], p: int) -> float | None:
    """The nearest-rank percentile: a value that was measured, never an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _seconds(delivery: Delivery) -> tuple[datetime, float] | None:
    """When it was delivered and how long after it was sent, or None if Braze did not say."""
    sent, delivered = placeable_time(delivery.sent_at), placeable_time(delivery.delivered_at)
    if sent is None or delivered is None or delivered < sent:
        return None
    return delivered, (delivered - sent).total_seconds()


def _floor(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _summed(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for name, count in pairs:
        total[name] += count
    return dict(sorted(total.items()))


Part = Callable[[Store, datetime], Awaitable[Any]]
PARTS: dict[str, Part] = {
    "outcomes": outcomes,
    "decisions": decisions,
    "attempts": attempts,
    "circuits": circuits,
    "deadlines": deadlines,
    "latency": latency,
}


async def overview(store: Store, now: datetime) -> dict[str, Any]:
    """Every part, as the page shows them together."""
    return {name: await part(store, now) for name, part in PARTS.items()}

"""Rolling figures over the sends settled in a window: pure, the caller brings them.

A send is one message: settled when Braze delivered it, bounced or aborted it, or
txmail timed it out. Its latency is Braze's `delivered_at` - `sent_at` (Braze's clock);
its lag, how late its slowest postback reached txmail after Braze's time.
"""

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Final

OVERALL: Final = "overall"


def campaign_scope(campaign_api_id: str) -> str:
    return f"campaign:{campaign_api_id}"


def scope_campaign(scope: str) -> str | None:
    """The campaign of a scope; None for the overall one."""
    return None if scope == OVERALL else scope.removeprefix("campaign:")


class Settled(StrEnum):
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    ABORTED = "aborted"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class SendSample:
    campaign_api_id: str | None
    settled: Settled
    latency: timedelta | None  # delivered with a readable `sent_at`
    lag: timedelta | None


@dataclass(frozen=True)
class Figures:
    """What the judgement stands on; rates are shares of ``sends``."""

    sends: int
    p95_latency: timedelta | None
    p99_latency: timedelta | None
    timeout_rate: float
    failure_rate: float  # bounced or aborted
    p95_lag: timedelta | None

    def as_json(self) -> dict[str, int | float | None]:
        def seconds(value: timedelta | None) -> float | None:
            return None if value is None else round(value.total_seconds(), 3)

        return {
            "sends": self.sends,
            "p95_latency_seconds": seconds(self.p95_latency),
            "p99_latency_seconds": seconds(self.p99_latency),
            "timeout_rate": round(self.timeout_rate, 4),
            "failure_rate": round(self.failure_rate, 4),
            "p95_lag_seconds": seconds(self.p95_lag),
        }


NO_SENDS: Final = Figures(0, None, None, 0.0, 0.0, None)


def percentile(values: Sequence[timedelta], share: float) -> timedelta | None:
    """The nearest-rank percentile (``share`` 0.95 for p95); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def figures(samples: Sequence[SendSample]) -> Figures:
    if not samples:
        return NO_SENDS
    latencies = [s.latency for s in samples if s.latency is not None]
    lags = [s.lag for s in samples if s.lag is not None]
    timed_out = sum(s.settled is Settled.TIMED_OUT for s in samples)
    failed = sum(s.settled in (Settled.BOUNCED, Settled.ABORTED) for s in samples)
    return Figures(
        sends=len(samples),
        p95_latency=percentile(latencies, 0.95),
        p99_latency=percentile(latencies, 0.99),
        timeout_rate=timed_out / len(samples),
        failure_rate=failed / len(samples),
        p95_lag=percentile(lags, 0.95),
    )


def by_scope(samples: Iterable[SendSample]) -> dict[str, Figures]:
    """Figures overall and for each campaign that has sends."""
    scoped: dict[str, list[SendSample]] = defaultdict(list)
    for sample in samples:
        scoped[OVERALL].append(sample)
        if sample.campaign_api_id is not None:
            scoped[campaign_scope(sample.campaign_api_id)].append(sample)
    return {scope: figures(scoped_samples) for scope, scoped_samples in scoped.items()}

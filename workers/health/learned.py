"""Learned delivery deadlines (``delivery_timeout = "auto"``): pure estimator, and the
values a worker currently uses.

A campaign's timeout follows what its emails take: the p99 sent→delivered latency of
its latest delivered sends, times a margin, within the bounds. Until it has
``min_sends`` of them, the configured default (within the bounds) applies.
"""

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Final

from txmail.core.health_settings import AutoBounds
from txmail.workers.health.figures import percentile

# Room over what the slowest of 100 emails took: a p99 doubled is rarely reached by
# an email Braze delivers normally, and a real delay still ends in a fallback.
MARGIN: Final = 2.0
# How many of a campaign's latest delivered sends it learns from.
LEARN_FROM: Final = 1000


def learn_timeout(
    latencies: Sequence[timedelta], bounds: AutoBounds, default: timedelta, min_sends: int
) -> timedelta:
    p99 = percentile(latencies, 0.99)
    if p99 is None or len(latencies) < min_sends:
        return bounds.clamp(default)
    return bounds.clamp(p99 * MARGIN)


class LearnedTimeouts:
    """The learned values, by campaign ('' for sends without one), as last read from the
    database; shared by the store that arms deadlines and the monitor that refreshes it."""

    def __init__(self) -> None:
        self._values: dict[str, timedelta] = {}

    def get(self, campaign_api_id: str | None) -> timedelta | None:
        return self._values.get(campaign_api_id or "")

    def replace(self, values: Mapping[str, timedelta]) -> None:
        self._values = dict(values)

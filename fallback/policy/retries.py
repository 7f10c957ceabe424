"""When to try a fallback request again: the retry schedule, with jitter.

Each delay of the schedule has its own delay queue with a fixed TTL (no broker plugin
needed). Each message's own expiration is that delay shortened by up to a fifth, at
random, so requests that failed together do not all come back together; it never
exceeds the queue's TTL, so no message holds up the ones behind it for longer.
"""

import random
from collections.abc import Sequence
from datetime import timedelta

JITTER = 0.2


class RetrySchedule:
    def __init__(self, delays: Sequence[timedelta]) -> None:
        self.delays = tuple(delays)

    def delay_before(self, attempt: int) -> timedelta | None:
        """The delay before attempt number ``attempt`` (1 = the first retry), or None
        when the schedule is used up."""
        if 1 <= attempt <= len(self.delays):
            return self.delays[attempt - 1]
        return None

    @staticmethod
    def jittered(delay: timedelta) -> timedelta:
        return delay * (1 - JITTER * random.random())  # noqa: S311 -- spreading load, not secrecy

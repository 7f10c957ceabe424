"""Random postback histories for property tests, and what the core alone makes of them."""

from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from tests.support.factories import postback, raw_postback
from txmail.core.events import utc_now
from txmail.workers.state import FAILURES, Event, Message, evolve

STATUSES = ("sent", "processed", "aborted", "delivered", "bounced", "deferred")

Histories = list[list[str]]
Postbacks = list[tuple[dict[str, Any], datetime]]
histories = st.lists(st.lists(st.sampled_from(STATUSES), min_size=1, max_size=5), max_size=8)


def postbacks_of(prefix: str, history: Histories, t0: datetime) -> Postbacks:
    """Every status a distinct postback: the same status twice is two different postbacks."""
    made = []
    for m, statuses in enumerate(history):
        for n, status in enumerate(statuses):
            metadata: dict[str, Any] = {f"{status}_at": (t0 + timedelta(seconds=n)).isoformat()}
            if status in FAILURES:
                metadata["reason"] = f"reason {n}"
            arrived = t0 + timedelta(milliseconds=10 * m + n)
            made.append((raw_postback(f"{prefix}-{m}", status, n=n, **metadata), arrived))
    return made


def expected_messages(postbacks: Postbacks) -> dict[str, tuple[Message, int]]:
    """Each message's events applied once, in order, by the core alone."""
    by_dispatch: dict[str, list[Event]] = {}
    for raw, arrived in postbacks:
        tracked = postback(raw["dispatch_id"], raw["status"], arrived, **raw["metadata"])
        assert tracked.core is not None
        by_dispatch.setdefault(raw["dispatch_id"], []).append(tracked.core)
    return {
        dispatch_id: (
            evolve(Message(key=f"dispatch:{dispatch_id}"), events, utc_now())[0],
            len(events),
        )
        for dispatch_id, events in by_dispatch.items()
    }

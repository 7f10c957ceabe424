"""The deployment's watermark: up to when deadlines may be judged, on Braze's clock.

A deadline is Braze's `sent_at` plus the timeout; whether a `delivered` came by then is
only known once txmail has heard everything Braze stamped before it. The wall clock
cannot tell: while postbacks wait in front of the ingress (Braze behind, a burst), in
the queue or in a worker, it runs ahead of what txmail knows. So each sweep claims only
deadlines up to ``due_by``, the smaller of two bounds built from every worker's progress:

- **arrival bound**: every event that reached txmail before it is applied (the oldest
  one still queued or in a worker's hands); this covers txmail's own backlog;
- **event-time watermark**: the latest Braze time applied, minus ``skew`` (how far
  Braze's stream may be out of order). Old postbacks being applied keep it old, so a
  backlog in front of the ingress makes deadlines wait; postbacks flowing in the present
  bring it to the present, so a `delivered` that never comes is timed out ``skew`` late.
  When no postback with a Braze time has arrived for ``max_lateness`` (Braze stopped
  sending), it follows the arrival bound ``max_lateness`` behind, so that deadlines
  still fire, at most that late.

- **held postbacks**: no deadline at or after the Braze time of a postback a live worker
  holds (in hand or waiting in its inbox) but has not applied. Without it, another
  worker applying later postbacks moves the watermark past a `delivered` still held:
  under a backlog Braze times lag arrivals, so the arrival bound alone does not hold it.

Silence is measured on the arrival bound, not on the wall clock: while txmail itself
is behind, events have arrived that are not applied yet, so it is not silence.

Pure: the caller brings the rows and the clock.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

# A worker whose row was not written for this many sweeps is taken for dead: the
# broker hands its unacked events to the others, whose own rows then cover them.
STALE_SWEEPS = 10
STALE_AT_LEAST = timedelta(seconds=2)
# Rows of dead workers are deleted after this; until then their Braze times still count.
FORGET_AFTER = timedelta(hours=1)
# The stores keep microseconds: one below a held postback's Braze time.
HELD_MARGIN = timedelta(microseconds=1)


@dataclass(frozen=True)
class WorkerProgress:
    """What one worker process has applied, as of ``heartbeat`` (its clock)."""

    worker_id: str
    heartbeat: datetime
    # Every event that reached txmail before this is applied; None: not known yet.
    applied_until: datetime | None
    # The latest Braze time of a postback applied, never after that postback's arrival.
    event_time: datetime | None
    # When the latest postback with a readable Braze time reached txmail.
    heard_at: datetime | None
    # The earliest Braze time of a postback this worker holds but has not applied.
    holding: datetime | None


@dataclass(frozen=True)
class WatermarkRule:
    skew: timedelta
    max_lateness: timedelta
    sweep_interval: timedelta

    @property
    def stale_after(self) -> timedelta:
        return max(STALE_SWEEPS * self.sweep_interval, STALE_AT_LEAST)


def due_by(rows: Sequence[WorkerProgress], now: datetime, rule: WatermarkRule) -> datetime | None:
    """Deadlines up to this may be claimed; None: none may be yet."""
    live = [row for row in rows if row.heartbeat >= now - rule.stale_after]
    bounds = [row.applied_until for row in live]
    if not bounds or None in bounds:
        return None  # a worker that just started may hold a backlog it has not looked at
    arrived = min(b for b in bounds if b is not None)
    # Dead workers' Braze times count too: what they applied is applied.
    event_times = [row.event_time for row in rows if row.event_time is not None]
    heard = [row.heard_at for row in rows if row.heard_at is not None]
    watermark = max(event_times) - rule.skew if event_times else None
    silent_since = arrived - rule.max_lateness
    if not heard or max(heard) <= silent_since:
        watermark = silent_since if watermark is None else max(watermark, silent_since)
    if watermark is None:
        return None
    held = [row.holding for row in live if row.holding is not None]
    # Strictly before: a `delivered` stamped at the deadline itself is in time.
    return min(arrived, watermark, *(t - HELD_MARGIN for t in held))

"""A message's story for the console: every postback, the decision and every fallback
attempt, in the order they happened, with the time between them."""

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise

from txmail.core.events import FALLBACK_ATTEMPT_TYPE, POSTBACK_TYPE, SEND_REGISTRATION_TYPE
from txmail.workers.state import Outcome
from txmail.workers.status import braze_time, braze_time_text
from txmail.workers.store.protocol import MessageView, TimelineEntry

# Outcomes in words, each with a symbol, so that color never carries the meaning alone.
OUTCOME_WORDS: dict[str, tuple[str, str]] = {
    Outcome.IN_FLIGHT: ("…", "in flight: not delivered yet"),
    Outcome.DELIVERED: ("✓", "delivered"),
    Outcome.ABORTED: ("✗", "aborted by Braze"),
    Outcome.BOUNCED: ("✗", "bounced"),
    Outcome.TIMED_OUT: ("⏱", "timed out: not delivered by its deadline"),
    Outcome.DELIVERED_LATE: ("⏱", "delivered after its deadline (the fallback ran)"),
    Outcome.PREMATURE_FALLBACK: (
        "!",
        "delivered in time, but the news came after the timeout fallback was decided",
    ),
}
KINDS = {
    POSTBACK_TYPE: "postback",
    SEND_REGISTRATION_TYPE: "registered",
    FALLBACK_ATTEMPT_TYPE: "fallback attempt",
}


@dataclass(frozen=True)
class Step:
    at: datetime  # when it happened: Braze's time where Braze gave one, else the arrival
    kind: str
    what: str
    received_at: datetime | None  # when txmail got it (None: txmail did it)
    braze_time: str | None  # Braze's own time, as Braze wrote it
    detail: str
    gap: timedelta | None = None  # since the step before


def steps(message: MessageView) -> list[Step]:
    """The timeline with the decision in it, in order, each with the gap before it."""
    ordered = sorted(
        [*(_step(e) for e in message.timeline), *_decision(message)],
        key=lambda s: (s.at, s.received_at or s.at),
    )
    return ordered[:1] + [
        replace(step, gap=step.at - before.at) for before, step in pairwise(ordered)
    ]


def _step(entry: TimelineEntry) -> Step:
    body = entry.body if isinstance(entry.body, dict) else {}
    detail = ""
    what = entry.label
    if entry.kind == POSTBACK_TYPE:
        metadata = body.get("metadata")
        reason = metadata.get("reason") if isinstance(metadata, dict) else None
        detail = reason if isinstance(reason, str) else ""
    elif entry.kind == FALLBACK_ATTEMPT_TYPE:
        what = f"{body.get('handler') or 'no rule matched'}: {body.get('outcome', '?')}"
        detail = f"attempt {body.get('attempt', '?')}" + (
            f": {body['detail']}" if body.get("detail") else ""
        )
    return Step(
        at=braze_time(entry) or entry.received_at,
        kind=KINDS.get(entry.kind, entry.kind),
        what=what,
        received_at=entry.received_at,
        braze_time=braze_time_text(entry),
        detail=detail,
    )


def _decision(message: MessageView) -> list[Step]:
    decision = message.decision
    if decision is None:
        return []
    published = (
        f"published {decision.published_at.isoformat(timespec='seconds')}"
        if decision.published_at
        else "not published yet"
    )
    on_deadline = (
        f"; on the deadline {decision.deadline.isoformat(timespec='seconds')}"
        if decision.deadline
        else ""
    )
    return [
        Step(
            at=decision.decided_at,
            kind="decision",
            what=f"fallback decided: {decision.trigger}",
            received_at=None,
            braze_time=None,
            detail=published + on_deadline,
        )
    ]


def gap_words(gap: timedelta | None) -> str:
    """``+4 s``, ``+2 min 3 s``, ``+1 h 5 min``; "" for the first step."""
    if gap is None:
        return ""
    seconds = int(gap.total_seconds())
    if seconds < 1:
        return f"+{gap.total_seconds() * 1000:.0f} ms"
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes)
    if not hours:
        parts += [f"{seconds} s"] * bool(seconds)
    return "+" + " ".join(parts)

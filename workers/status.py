"""``txmail status``: a message's outcome and timeline, for a person or a script.

Ids, reasons and bodies come from whoever holds a token: the text output escapes
control characters (a newline or an ANSI escape in a reason would forge lines on the
operator's screen), and the JSON output escapes those JSON itself leaves raw.
"""

import json
import re
from datetime import datetime

from txmail.core.durations import format_duration
from txmail.core.events import FALLBACK_ATTEMPT_TYPE, POSTBACK_TYPE, FallbackAttempt
from txmail.core.terminal import printable
from txmail.workers.store.protocol import MessageView, Store, TimelineEntry

# What JSON leaves unescaped but a terminal may still act on: DEL, C1 controls, and
# the Unicode line and paragraph separators.
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029]")


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def braze_time_text(entry: TimelineEntry) -> str | None:
    """Braze's own time of a postback (``sent_at`` of a `sent`, ...), as Braze wrote it,
    when it gave one: postbacks often arrive together or out of order, and this is
    when it happened."""
    if entry.kind != POSTBACK_TYPE or not isinstance(entry.body, dict):
        return None
    metadata = entry.body.get("metadata")
    at = metadata.get(f"{entry.label}_at") if isinstance(metadata, dict) else None
    return at if isinstance(at, str) else None


def braze_time(entry: TimelineEntry) -> datetime | None:
    return placeable_time(braze_time_text(entry))


def placeable_time(text: str | None) -> datetime | None:
    """A time Braze wrote, if it can be placed against others: ISO 8601 with an offset."""
    try:
        at = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    # Without an offset it cannot be placed against the other events: use the arrival.
    return at if at is not None and at.tzinfo is not None else None


async def find_either(store: Store, wanted: str) -> MessageView | None:
    """The message ``wanted`` names, as a dispatch id or an external send id."""
    return await store.find(dispatch_id=wanted) or await store.find(external_send_id=wanted)


def in_braze_order(message: MessageView) -> MessageView:
    """The timeline in the order things happened as Braze tells it; the arrival where
    Braze gave no time (registrations, fallback attempts) and as the tie-break."""

    def when(entry: TimelineEntry) -> tuple[datetime, datetime]:
        return (braze_time(entry) or entry.received_at, entry.received_at)

    return message.model_copy(update={"timeline": sorted(message.timeline, key=when)})


def last_fallback_attempt(message: MessageView) -> FallbackAttempt | None:
    """The latest fallback attempt (handler, outcome, detail...), if any."""
    attempts = [
        FallbackAttempt.model_validate(e.body)
        for e in message.timeline
        if e.kind == FALLBACK_ATTEMPT_TYPE
    ]
    return max(attempts, key=lambda a: a.at, default=None)


def as_json(message: MessageView) -> str:
    """The message for scripts: the API's view, timeline in Braze's order, plus the
    last fallback attempt."""
    ordered = in_braze_order(message)
    attempt = last_fallback_attempt(ordered)
    document = {
        **ordered.model_dump(mode="json"),
        "last_fallback_attempt": attempt.model_dump(mode="json") if attempt else None,
    }
    return terminal_safe_json(json.dumps(document, indent=2, ensure_ascii=False))


def terminal_safe_json(text: str) -> str:
    """JSON with what JSON leaves raw but a terminal may act on escaped too."""
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def describe(message: MessageView) -> str:
    """A few lines a person on call can read at a glance."""
    message = in_braze_order(message)
    outcome = message.outcome.value.replace("_", " ")
    lines = [
        f"{outcome}" + (f": {message.reason}" if message.reason else ""),
        f"  dispatch id       {message.dispatch_id or '-'}",
        f"  external send id  {message.external_send_id or '-'}",
        f"  campaign          {message.campaign_api_id or '-'}",
    ]
    if message.deadline:
        lines.append(f"  deadline          {_time(message.deadline)}")
    if message.learned_timeout:
        learned = format_duration(message.learned_timeout)
        lines.append(f'  learned timeout   {learned} (delivery_timeout = "auto")')
    if message.registration:
        recipient = message.registration.registration.recipient
        who = ", ".join(x for x in (recipient.email, recipient.phone) if x) or "-"
        lines.append(f"  recipient         {who}")
    decision = message.decision
    if decision:
        published = (
            f"published {_time(decision.published_at)}"
            if decision.published_at
            else "not published yet"
        )
        lines.append(
            f"  fallback          {decision.trigger}, decided {_time(decision.decided_at)}, "
            f"{published}"
        )
        if decision.deadline:
            health = decision.request.braze_health if decision.request else None
            while_braze = f", Braze {health}" if health else ""
            lines.append(f"  on the deadline   {_time(decision.deadline)}{while_braze}")
    attempt = last_fallback_attempt(message)
    if attempt:
        lines.append(
            f"  last attempt      {attempt.handler or '-'}: {attempt.outcome.value} "
            f"(attempt {attempt.attempt}, {_time(attempt.at)})"
            + (f": {attempt.detail}" if attempt.detail else "")
        )
    lines.append("timeline:")
    width = max((len(e.kind) for e in message.timeline), default=0)
    for e in message.timeline:
        braze = braze_time_text(e)
        lines.append(
            f"  {_time(e.received_at)}  {e.kind:<{width}}  {e.label}"
            + (f"  (Braze: {braze})" if braze else "")
        )
    # Escaped line by line: what came from outside cannot add a line of its own.
    return "\n".join(printable(line) for line in lines)

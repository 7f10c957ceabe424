"""``txmail status``: a message's outcome and timeline, for a person or a script."""

from datetime import datetime

from workers.store.protocol import MessageView, TimelineEntry


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _braze_time(entry: TimelineEntry) -> str:
    """Braze's own time of a postback (``sent_at`` of a `sent`, ...), when it gave one:
    postbacks often arrive together or out of order, and this is when it happened."""
    metadata = entry.body.get("metadata") if isinstance(entry.body, dict) else None
    at = metadata.get(f"{entry.label}_at") if isinstance(metadata, dict) else None
    return f"  (Braze: {at})" if entry.kind == "postback" and isinstance(at, str) else ""


def describe(message: MessageView) -> str:
    """A few lines a person on call can read at a glance."""
    outcome = message.outcome.value.replace("_", " ")
    lines = [
        f"{outcome}" + (f": {message.reason}" if message.reason else ""),
        f"  dispatch id       {message.dispatch_id or '-'}",
        f"  external send id  {message.external_send_id or '-'}",
        f"  campaign          {message.campaign_api_id or '-'}",
    ]
    if message.deadline:
        lines.append(f"  deadline          {_time(message.deadline)}")
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
            lines.append(f"  on the deadline   {_time(decision.deadline)}")
    lines.append("timeline:")
    width = max((len(e.kind) for e in message.timeline), default=0)
    lines += [
        f"  {_time(e.received_at)}  {e.kind:<{width}}  {e.label}{_braze_time(e)}"
        for e in message.timeline
    ]
    return "\n".join(lines)

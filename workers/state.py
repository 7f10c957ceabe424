"""The functional core: a message's events in, its state and the fallback decision out.

No I/O here. The stores load a message, call ``evolve`` or ``claim_deadline`` and
persist what comes back, so the rules below are the only place these rules live.

Invariant 2 of docs/architecture.md (order and duplicates do not matter) holds because
``merge`` is a join: for each status it keeps the earliest sighting (earliest arrival,
then smallest event id), for the registration the latest one, and for ids the smallest
non-empty one. Any order, any number of copies, same ``Message``. Only the decision is
sticky: once made, it is part of the message and never made again (invariant 3).
"""

import hashlib
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from txmail.core.events import (
    DEADLINE_TRIGGERS,
    BrazeHealth,
    FallbackRequest,
    Postback,
    Recipient,
    SendRegistration,
    Trigger,
)
from txmail.workers.timeouts import DeliveryTimeouts

# Failures in rank order: a bounce is the later, more definite verdict of the two.
FAILURES: Final = ("bounced", "aborted")
ARMING: Final = ("sent", "processed")
# What shows Braze sent the message: a deadline passed after one is a timeout.
_SENDING: Final = frozenset({*ARMING, "delivered"})


class Outcome(StrEnum):
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    ABORTED = "aborted"
    BOUNCED = "bounced"
    TIMED_OUT = "timed_out"
    DELIVERED_LATE = "delivered_late"
    # Braze stamped `delivered` in time, but it reached txmail after the timeout fallback
    # was decided: what the watermark's lateness bound cost (see the README).
    PREMATURE_FALLBACK = "premature_fallback"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PostbackEvent(_Frozen):
    event_id: str
    received_at: datetime
    postback: Postback


class RegistrationEvent(_Frozen):
    event_id: str
    received_at: datetime
    registration: SendRegistration


Event = PostbackEvent | RegistrationEvent


class StatusSeen(_Frozen):
    """The earliest sighting of one status: when it arrived, and what Braze said."""

    received_at: datetime
    event_id: str
    reason: str | None = None
    # Braze's own timestamps of that postback (`sent_at`, `bounced_at`, ...), as written.
    timestamps: dict[str, str] = Field(default_factory=dict)

    def _rank(self) -> tuple[datetime, str]:
        return (self.received_at, self.event_id)


class Registered(_Frozen):
    received_at: datetime
    event_id: str
    registration: SendRegistration

    def _rank(self) -> tuple[datetime, str]:
        return (self.received_at, self.event_id)


class Decision(_Frozen):
    trigger: Trigger
    decided_at: datetime
    # The deadline a timeout was decided on; None for failures (and older decisions).
    deadline: datetime | None = None
    # Braze's health when the deadline was claimed; None for failures (and older ones).
    # Without one, written without the field: a worker of the version before it (whose
    # models refuse unknown fields) still reads every failure's summary in an upgrade.
    braze_health: BrazeHealth | None = Field(default=None, exclude_if=lambda h: h is None)


class Message(_Frozen):
    """Everything known about one send; what the stores persist."""

    key: str
    dispatch_id: str | None = None
    external_send_id: str | None = None
    campaign_api_id: str | None = None
    statuses: dict[str, StatusSeen] = Field(default_factory=dict)
    registration: Registered | None = None
    decision: Decision | None = None
    # The learned ("auto") timeout its deadline was armed with: kept, so that what is
    # learned later does not move a deadline already armed.
    learned_timeout: timedelta | None = None


def message_key(external_send_id: str | None, dispatch_id: str | None) -> str:
    """One message per send: the sender's own id when it has one (a registration knows
    nothing else), else Braze's dispatch id."""
    if external_send_id:
        return f"send:{external_send_id}"
    return f"dispatch:{dispatch_id}"


def key_of(event: Event) -> str:
    if isinstance(event, RegistrationEvent):
        return message_key(event.registration.external_send_id, None)
    return message_key(event.postback.external_send_id, event.postback.dispatch_id)


def idempotency_key(key: str) -> str:
    """Stable per message, opaque downstream."""
    return "txm_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _smallest(a: str | None, b: str | None) -> str | None:
    """The smaller of two ids, ignoring missing ones."""
    if not a:
        return b or None
    if not b:
        return a
    return min(a, b)


def _braze_timestamps(metadata: dict[str, object]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k.endswith("_at") and isinstance(v, str)}


def merge(message: Message, event: Event) -> Message:
    """Add one event; commutative and idempotent."""
    if isinstance(event, RegistrationEvent):
        new = Registered(
            received_at=event.received_at,
            event_id=event.event_id,
            registration=event.registration,
        )
        current = message.registration
        return message.model_copy(
            update={
                "external_send_id": _smallest(
                    message.external_send_id, event.registration.external_send_id
                ),
                "campaign_api_id": _smallest(
                    message.campaign_api_id, event.registration.campaign_api_id
                ),
                "registration": new
                if current is None or new._rank() > current._rank()
                else current,
            }
        )
    postback = event.postback
    reason = postback.metadata.get("reason")
    seen = StatusSeen(
        received_at=event.received_at,
        event_id=event.event_id,
        reason=reason if isinstance(reason, str) else None,
        timestamps=_braze_timestamps(postback.metadata),
    )
    statuses = dict(message.statuses)
    current_seen = statuses.get(postback.status)
    if current_seen is None or seen._rank() < current_seen._rank():
        statuses[postback.status] = seen
    return message.model_copy(
        update={
            "dispatch_id": _smallest(message.dispatch_id, postback.dispatch_id),
            "external_send_id": _smallest(message.external_send_id, postback.external_send_id),
            "campaign_api_id": _smallest(message.campaign_api_id, postback.campaign_api_id),
            "statuses": statuses,
        }
    )


def failure(message: Message) -> str | None:
    for status in FAILURES:  # a loop, not next() over a generator: asked several times a row
        if status in message.statuses:
            return status
    return None


def outcome(message: Message) -> Outcome:
    """A failure outranks `delivered`, which outranks everything still in flight."""
    if failed := failure(message):
        return Outcome(failed)
    decision = message.decision
    late = decision is not None and decision.trigger in DEADLINE_TRIGGERS
    delivered = message.statuses.get("delivered")
    if delivered is None:
        return Outcome.TIMED_OUT if late else Outcome.IN_FLIGHT
    if not late:
        return Outcome.DELIVERED
    delivered_at = _parse_time(delivered.timestamps.get("delivered_at"))
    due = decision.deadline if decision else None
    if delivered_at is not None and due is not None and delivered_at <= due:
        return Outcome.PREMATURE_FALLBACK
    return Outcome.DELIVERED_LATE


def reason(message: Message) -> str | None:
    failed = failure(message)
    return message.statuses[failed].reason if failed else None


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None  # a timestamp we cannot read is not a reason to lose the message
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def braze_sending_time(message: Message) -> timedelta | None:
    """Braze's own time from `sent_at` to `delivered_at`, when both postbacks said one
    (and in that order: Braze's published examples have them the wrong way round)."""
    sent, delivered = message.statuses.get("sent"), message.statuses.get("delivered")
    if sent is None or delivered is None:
        return None
    sent_at = _parse_time(sent.timestamps.get("sent_at"))
    delivered_at = _parse_time(delivered.timestamps.get("delivered_at"))
    if sent_at is None or delivered_at is None or delivered_at < sent_at:
        return None
    return delivered_at - sent_at


def event_time(event: PostbackEvent) -> datetime | None:
    """When Braze says this postback's status happened (`delivered_at` of a `delivered`,
    ...), in UTC; never after its arrival, so that a clock ahead, or a forged timestamp,
    cannot pass for the future. None when it has no readable one."""
    at = event.postback.metadata.get(f"{event.postback.status}_at")
    stamped = _parse_time(at if isinstance(at, str) else None)
    if stamped is None:
        return None
    try:
        return min(stamped, event.received_at).astimezone(UTC)
    except OverflowError:
        return None  # a time at the edge of the calendar with no UTC equivalent


def _timeout(message: Message, timeouts: DeliveryTimeouts) -> timedelta:
    registered = message.registration
    if registered is not None and registered.registration.delivery_timeout is not None:
        return registered.registration.delivery_timeout
    return message.learned_timeout or timeouts.for_campaign(message.campaign_api_id)


def keep_learned_timeout(message: Message, timeouts: DeliveryTimeouts) -> Message:
    """Record the learned timeout an armed deadline uses, the first time it is armed on
    one; unchanged when its timeout is fixed (configured, or the registration's)."""
    if message.learned_timeout is not None or message.decision or failure(message):
        return message
    if timeouts.auto_bounds(message.campaign_api_id) is None:
        return message
    registered = message.registration
    if registered is not None and registered.registration.delivery_timeout is not None:
        return message
    if _armed_deadline(message, timeouts) is None:
        return message
    learned = timeouts.for_campaign(message.campaign_api_id)
    return message.model_copy(update={"learned_timeout": learned})


def deadline(message: Message, timeouts: DeliveryTimeouts) -> datetime | None:
    """When the message is late, or None when nothing is pending any more: decided,
    failed, or delivered by the deadline on Braze's clock.

    Armed by `sent` or `processed`, measured from Braze's `sent_at` when known (and not
    after the earliest arrival), else from the earliest arrival; a registration alone
    arms it from its own arrival.
    """
    if message.decision or failure(message):
        return None
    due = _armed_deadline(message, timeouts)
    delivered = message.statuses.get("delivered")
    if delivered is None or due is None:
        return due
    # Judged on Braze's clock, so that the order the postbacks arrive in cannot change
    # the decision: a `delivered` stamped after the deadline leaves it armed, and the
    # sweeper decides the timeout as it would have had the `delivered` come later. Its
    # time is taken no later than its arrival (a clock ahead must not make it late);
    # without a readable time, delivered is delivered.
    delivered_at = _parse_time(delivered.timestamps.get("delivered_at"))
    if delivered_at is None or min(delivered_at, delivered.received_at) <= due:
        return None
    return due


def _armed_deadline(message: Message, timeouts: DeliveryTimeouts) -> datetime | None:
    statuses = message.statuses
    arrivals = [statuses[s].received_at for s in ARMING if s in statuses]
    if arrivals:
        arrived = min(arrivals)
        sent = statuses.get("sent")
        sent_at = _parse_time(sent.timestamps.get("sent_at")) if sent else None
        # Never after the arrival: a clock ahead or a wrong offset must not postpone it.
        starts = (arrived,) if sent_at is None or sent_at > arrived else (sent_at, arrived)
    elif message.registration is not None:
        starts = (message.registration.received_at,)
    else:
        return None
    timeout = _timeout(message, timeouts)
    for start in starts:
        try:
            # In UTC, so that the stores can keep it: a `sent_at` at either end of the
            # calendar can make a deadline that has no UTC time, like a timeout longer
            # than the calendar. The arrival is the fallback; failing that, never due.
            return (start + timeout).astimezone(UTC)
        except OverflowError:
            continue
    return None


def evolve(message: Message, events: list[Event], now: datetime) -> tuple[Message, Decision | None]:
    """Merge events; decide a fallback when the message failed and none was decided yet."""
    for event in events:
        message = merge(message, event)
    failed = failure(message)
    if message.decision is None and failed is not None:
        decision = Decision(trigger=Trigger(failed), decided_at=now)
        return message.model_copy(update={"decision": decision}), decision
    return message, None


def claim_deadline(
    message: Message,
    timeouts: DeliveryTimeouts,
    now: datetime,
    due_by: datetime | None = None,
    *,
    braze_health: BrazeHealth | None,
) -> tuple[Message, Decision | None]:
    """Decide a timeout when the deadline has passed (the sweeper's half of the race).

    ``due_by`` (default ``now``) is how far the events are known to be applied: a
    deadline after it may still meet a `delivered` that arrived in time.
    ``braze_health`` is Braze's health for this message as the claiming transaction
    reads it; the decision keeps it, so its request is the same on every publish.
    """
    due = deadline(message, timeouts)
    if due is None or due > (now if due_by is None else due_by):
        return message, None
    sent = not _SENDING.isdisjoint(message.statuses)
    decision = Decision(
        trigger=Trigger.TIMEOUT if sent else Trigger.NOT_SENT,
        decided_at=now,
        deadline=due,
        braze_health=braze_health,
    )
    return message.model_copy(update={"decision": decision}), decision


# Whom to reach for a message nobody registered: nobody (built once, it is frozen).
_NOBODY: Final = Recipient()


def fallback_request(message: Message) -> FallbackRequest:
    """What the fallback handlers get for a decided message."""
    if message.decision is None:
        raise ValueError(f"message {message.key} has no fallback decision")
    timestamps: dict[str, str] = {}
    for status in sorted(message.statuses):
        timestamps.update(message.statuses[status].timestamps)
    registration = message.registration.registration if message.registration else None
    return FallbackRequest(
        idempotency_key=idempotency_key(message.key),
        trigger=message.decision.trigger,
        dispatch_id=message.dispatch_id,
        external_send_id=message.external_send_id,
        campaign_api_id=message.campaign_api_id,
        reason=reason(message),
        braze_timestamps=timestamps,
        recipient=registration.recipient if registration else _NOBODY,
        variables=dict(registration.variables) if registration else {},
        decided_at=message.decision.decided_at,
        braze_health=message.decision.braze_health,
    )

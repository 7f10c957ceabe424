"""What arrives on the tracker queue, turned into events for a message's timeline.

Anything that is not the contract raises NotTheContract: such a message can never be
processed, so the tracker dead-letters it at once instead of retrying it.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from txmail.core.consumer import Received
from txmail.core.errors import TxmailError
from txmail.core.events import (
    FALLBACK_ATTEMPT_TYPE,
    HEALTH_CHANGE_PREFIX,
    HEALTH_CHANGE_TYPE,
    POSTBACK_TYPE,
    SEND_REGISTRATION_TYPE,
    FallbackAttempt,
    HealthChange,
    Postback,
    SendRegistration,
    event_id,
)
from txmail.workers.state import PostbackEvent, RegistrationEvent, event_time, message_key
from txmail.workers.store.protocol import TrackedEvent


class NotTheContract(TxmailError):
    """A message on the tracker queue that no worker will ever be able to process."""


@dataclass(frozen=True)
class Delivery:
    """A delivery from the tracker queue, decoded as it arrives: the watermark needs the
    Braze times of the postbacks a worker holds, not only of those it applied."""

    message: Received
    received_at: datetime
    # The event, or why it is none (reported when the delivery is handled).
    decoded: TrackedEvent | Exception
    # Braze's time of a postback; None for anything else or a postback without one.
    braze_time: datetime | None


def arrive(message: Received, now: datetime) -> Delivery:
    arrived = received_at(message.headers, message.timestamp, now)
    try:
        event = decode(message.type, message.body, arrived)
    except Exception as error:  # not only NotTheContract: a bug must not stop the consumer
        return Delivery(message, arrived, error, None)
    stamped = event_time(event.core) if isinstance(event.core, PostbackEvent) else None
    return Delivery(message, arrived, event, stamped)


def received_at(headers: Mapping[str, Any], timestamp: datetime | None, now: datetime) -> datetime:
    """When the event reached txmail: the ingress's header, else the AMQP timestamp."""
    value = headers.get("received_at")
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            # In UTC, or not at all: a time with no UTC equivalent (year 0 or 10000)
            # is one neither store can keep.
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    if timestamp is not None:
        return timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
    return now


def health_key(change_id: str) -> str:
    """Where a change of Braze's health and its handlers' attempts are kept (``events``)."""
    return f"health:{change_id}"


def decode(kind: str | None, body: bytes, arrived: datetime) -> TrackedEvent:
    """Turn one delivery, which reached txmail ``arrived`` (``received_at``), into a
    TrackedEvent; raise NotTheContract saying why it is not one."""
    try:
        text = body.decode()
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise NotTheContract(f"body is a JSON {type(raw).__name__}, not an object")
        # The id is always computed from the body, never trusted from the publisher.
        # Computing it also encodes the body: an unpaired surrogate fails here.
        eid = event_id(raw)
    except (ValueError, RecursionError) as error:  # UnicodeError is a ValueError
        raise NotTheContract(f"body is not JSON text: {error}") from None
    try:
        if kind == POSTBACK_TYPE:
            postback = Postback.model_validate(raw)
            key = message_key(postback.external_send_id, postback.dispatch_id)
            core = PostbackEvent(event_id=eid, received_at=arrived, postback=postback)
            return TrackedEvent(eid, key, kind, postback.status, arrived, text, core)
        if kind == SEND_REGISTRATION_TYPE:
            registration = SendRegistration.model_validate(raw)
            key = message_key(registration.external_send_id, None)
            registered = RegistrationEvent(
                event_id=eid, received_at=arrived, registration=registration
            )
            return TrackedEvent(eid, key, kind, "registered", arrived, text, registered)
        if kind == FALLBACK_ATTEMPT_TYPE:
            attempt = FallbackAttempt.model_validate(raw)
            label = f"{attempt.handler or '-'}: {attempt.outcome.value}"
            if attempt.idempotency_key.startswith(HEALTH_CHANGE_PREFIX):
                # A handler run for a change of Braze's health: kept with that change.
                key = health_key(attempt.idempotency_key)
            elif attempt.external_send_id or attempt.dispatch_id:
                key = message_key(attempt.external_send_id, attempt.dispatch_id)
            else:
                raise NotTheContract("fallback attempt names neither a dispatch nor a send id")
            return TrackedEvent(eid, key, kind, label, arrived, text, None)
        if kind == HEALTH_CHANGE_TYPE:
            change = HealthChange.model_validate(raw)
            key = health_key(change.change_id)
            return TrackedEvent(eid, key, kind, change.health, arrived, text, None)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        raise NotTheContract(f"not a valid {kind}: {problems}") from None
    raise NotTheContract(f"unknown message type {kind!r}")

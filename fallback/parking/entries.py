"""What ``txmail dlq`` shows of a held message, read leniently from its headers and
body: a parked fallback request, or a message of the dead-letter queue."""

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from txmail.core.broker import Broker, Outgoing
from txmail.core.terminal import printable
from txmail.core.topology import Topology
from txmail.fallback.parking.held import Selection, visit
from txmail.fallback.policy.progress import (
    PARKED_AT,
    PARKED_REASON,
    RequestProgress,
    replayed_copy,
)

# A handler's failure inside a parking reason: "ops-hook: transient: answered 503".
_FAILURE = re.compile(r"(?:^|; )([A-Za-z0-9][A-Za-z0-9_.-]*): (?:transient|permanent): ")


@dataclass(frozen=True)
class ParkedRequest:
    message_id: str
    idempotency_key: str | None
    trigger: str | None
    external_send_id: str | None
    reason: str
    parked_at: str
    attempts: int
    succeeded: tuple[str, ...]
    # Handlers that failed on it: for good on any attempt, or on the last one.
    failed: tuple[str, ...]

    @property
    def ids(self) -> set[str]:
        """What ``dlq replay`` accepts for it: the message id or the idempotency key."""
        return {self.message_id, *([self.idempotency_key] if self.idempotency_key else [])}

    @property
    def at(self) -> datetime | None:
        return _time(self.parked_at)

    @property
    def name(self) -> str:
        key = f" ({self.idempotency_key})" if self.idempotency_key else ""
        return self.message_id + key

    def describe(self) -> str:
        return "\n".join(
            [
                f"- id: {_show(self.message_id)}",
                f"  idempotency_key: {_show(self.idempotency_key)}",
                f"  trigger: {_show(self.trigger)}"
                f"  external_send_id: {_show(self.external_send_id)}",
                f"  parked_at: {_show(self.parked_at)}  attempts: {self.attempts}"
                f"  succeeded: {_show(', '.join(self.succeeded))}",
                f"  reason: {_show(self.reason)}",
            ]
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> "ParkedRequest":
        headers = message.headers or {}
        fields = _json_object(message.body)
        progress = RequestProgress.from_headers(headers)
        reason = _text(headers.get(PARKED_REASON)) or "(no reason recorded)"
        return cls(
            message_id=message.message_id or "",
            idempotency_key=_text(fields.get("idempotency_key")),
            trigger=_text(fields.get("trigger")),
            external_send_id=_text(fields.get("external_send_id")),
            reason=reason,
            parked_at=_text(headers.get(PARKED_AT)) or "",
            attempts=progress.attempt,
            succeeded=tuple(sorted(progress.succeeded)),
            failed=tuple(sorted(progress.failed | set(_FAILURE.findall(reason)))),
        )

    @staticmethod
    def held_in(topology: Topology) -> str:
        return topology.fallback_parking_queue

    @staticmethod
    def replay_target(message: AbstractIncomingMessage, topology: Topology) -> Outgoing | str:
        """The fallback queue, with its retries started over."""
        return replayed_copy(message, topology.fallback_queue)


@dataclass(frozen=True)
class DeadLetter:
    """A message no consumer could process: where it died, why, and what it was."""

    message_id: str
    type: str | None
    died_in: str | None  # the queue
    reason: str | None  # RabbitMQ's: rejected, delivery_limit, expired, maxlen
    died_at: str
    exchange: str | None  # where it had been published, to replay it there
    routing_key: str | None
    dispatch_id: str | None
    external_send_id: str | None
    idempotency_key: str | None
    trigger: str | None

    @property
    def ids(self) -> set[str]:
        """What ``dlq replay`` accepts for it: the message id, a dispatch id, or a
        fallback request's idempotency key."""
        return {self.message_id} | {
            i for i in (self.dispatch_id, self.idempotency_key) if i is not None
        }

    @property
    def at(self) -> datetime | None:
        return _time(self.died_at)

    @property
    def name(self) -> str:
        return f"{self.message_id} ({self.routing_key})" if self.routing_key else self.message_id

    def describe(self) -> str:
        return "\n".join(
            [
                f"- id: {_show(self.message_id)}  type: {_show(self.type)}",
                f"  died_in: {_show(self.died_in)}  reason: {_show(self.reason)}"
                f"  at: {_show(self.died_at)}",
                f"  published_to: {_show(self.exchange)}  routing_key: {_show(self.routing_key)}",
                f"  dispatch_id: {_show(self.dispatch_id)}"
                f"  external_send_id: {_show(self.external_send_id)}"
                f"  idempotency_key: {_show(self.idempotency_key)}",
            ]
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def failed(self) -> tuple[str, ...]:
        return ()

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> "DeadLetter":
        death = _last_death(message)
        fields = _json_object(message.body)
        keys = death.get("routing-keys")
        died_at = death.get("time")
        return cls(
            message_id=message.message_id or "",
            type=message.type,
            died_in=_text(death.get("queue")),
            reason=_text(death.get("reason")),
            died_at=died_at.isoformat() if isinstance(died_at, datetime) else "",
            exchange=_text(death.get("exchange")),
            routing_key=_text(keys[0]) if isinstance(keys, list) and keys else None,
            dispatch_id=_text(fields.get("dispatch_id")),
            external_send_id=_text(fields.get("external_send_id"))
            or _text(_json_object_of(fields.get("metadata")).get("external_send_id")),
            idempotency_key=_text(fields.get("idempotency_key")),
            trigger=_text(fields.get("trigger")),
        )

    @staticmethod
    def held_in(topology: Topology) -> str:
        return topology.dead_letter_queue

    @staticmethod
    def replay_target(message: AbstractIncomingMessage, topology: Topology) -> Outgoing | str:
        """Where it was published before it died (RabbitMQ's x-death header says)."""
        dead = DeadLetter.from_message(message)
        if dead.exchange is None or dead.routing_key is None:
            return "no x-death header says where it was published"
        return Outgoing.again(message, dead.exchange, dead.routing_key, {})


def _last_death(message: AbstractIncomingMessage) -> dict[str, Any]:
    # RabbitMQ keeps one entry per queue and reason it died for, the latest first.
    deaths = (message.headers or {}).get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths else None
    return first if isinstance(first, dict) else {}


def _show(value: str | None) -> str:
    return printable(value) if value else "-"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _json_object_of(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        return _json_object_of(json.loads(body))
    except ValueError:
        return {}


def _time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def list_parked(broker: Broker, topology: Topology) -> list[ParkedRequest]:
    return [v.held async for v in visit(broker, topology, ParkedRequest, Selection())]


async def replay_parked(
    broker: Broker, topology: Topology, ids: set[str] | None
) -> list[ParkedRequest]:
    """Put the parked requests with these ids (all of them for None) back on the
    fallback queue; return those replayed."""
    replaying = visit(broker, topology, ParkedRequest, Selection(ids=ids), replay=True)
    return [v.held async for v in replaying if v.outcome == "replayed"]

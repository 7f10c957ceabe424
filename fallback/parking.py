"""The parking queue, for ops: what is parked and why (``txmail dlq list``), and putting
requests back on the fallback queue once the cause is fixed (``txmail dlq replay``).

Reading never loses a message: each one is fetched unacknowledged and, unless it was
replayed (republished, confirmed, then acked), given back when the channel closes.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from fallback.progress import PARKED_AT, PARKED_REASON, Progress
from fallback.publisher import with_new_headers
from txmail.broker import BROKER_ERRORS
from txmail.errors import BrokerUnavailable
from txmail.topology import Topology


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

    @property
    def ids(self) -> set[str]:
        """What ``dlq replay`` accepts for it: the message id or the idempotency key."""
        return {self.message_id, *([self.idempotency_key] if self.idempotency_key else [])}

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> "ParkedRequest":
        headers = message.headers or {}
        try:
            body = json.loads(message.body)
        except ValueError:
            body = None
        fields: dict[str, Any] = body if isinstance(body, dict) else {}
        progress = Progress.from_headers(headers)

        def text(value: object) -> str | None:
            return value if isinstance(value, str) else None

        return cls(
            message_id=message.message_id or "",
            idempotency_key=text(fields.get("idempotency_key")),
            trigger=text(fields.get("trigger")),
            external_send_id=text(fields.get("external_send_id")),
            reason=text(headers.get(PARKED_REASON)) or "(no reason recorded)",
            parked_at=text(headers.get(PARKED_AT)) or "",
            attempts=progress.attempt,
            succeeded=tuple(sorted(progress.succeeded)),
        )


async def list_parked(
    connection: AbstractRobustConnection, topology: Topology
) -> list[ParkedRequest]:
    seen, _ = await _visit(connection, topology, lambda parked: False)
    return seen


async def replay_parked(
    connection: AbstractRobustConnection, topology: Topology, ids: set[str] | None
) -> list[ParkedRequest]:
    """Put the parked requests with these ids (all of them for None) back on the
    fallback queue; return those replayed."""
    _, replayed = await _visit(connection, topology, lambda p: ids is None or bool(p.ids & ids))
    return replayed


async def _visit(
    connection: AbstractRobustConnection,
    topology: Topology,
    replay: Callable[[ParkedRequest], bool],
) -> tuple[list[ParkedRequest], list[ParkedRequest]]:
    """Fetch each message parked now (not those parked while this runs) and replay the
    chosen ones; return all of them, and those replayed."""
    seen: list[ParkedRequest] = []
    replayed: list[ParkedRequest] = []
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await topology.declare(channel)
            queue = await channel.declare_queue(topology.fallback_parking_queue, passive=True)
            count = queue.declaration_result.message_count or 0
            for _ in range(count):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                parked = ParkedRequest.from_message(message)
                seen.append(parked)
                if replay(parked):
                    progress = Progress.from_headers(message.headers).for_replay()
                    await channel.default_exchange.publish(
                        with_new_headers(message, progress.to_headers()),
                        topology.fallback_queue,
                        mandatory=True,
                    )
                    await message.ack()
                    replayed.append(parked)
        finally:
            # Gives back every message fetched and not acked, in its place.
            await channel.close()
    except BROKER_ERRORS as error:
        raise BrokerUnavailable(f"RabbitMQ: {error!r}") from error
    return seen, replayed

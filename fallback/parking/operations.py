"""The parking queue as the API's console uses it: the same listing and replay as
``txmail dlq``, behind the ``txmail.core.parked`` protocol the command wires in."""

import asyncio

from txmail.core.broker import BROKER_ERRORS
from txmail.core.errors import BrokerUnavailable
from txmail.core.parked import ParkedFallback, ParkedListing
from txmail.core.readable import readable
from txmail.core.settings import Settings
from txmail.fallback.executor.service import fallback_topology
from txmail.fallback.parking.entries import ParkedRequest, replay_parked
from txmail.fallback.parking.held import Counts, Selection, connected_broker, visit

# A page waits this long for RabbitMQ before it says the parking queue is unknown.
CONNECT_TIMEOUT = 5.0


def _shown(parked: ParkedRequest) -> ParkedFallback:
    return ParkedFallback(
        message_id=parked.message_id,
        idempotency_key=parked.idempotency_key,
        trigger=parked.trigger,
        external_send_id=parked.external_send_id,
        reason=parked.reason,
        parked_at=parked.at,
        attempts=parked.attempts,
        failed_handlers=parked.failed,
    )


class BrokerParkedFallbacks:
    """One connection per call: the API otherwise needs no broker, and a page that
    asks while RabbitMQ is away gets an answer in CONNECT_TIMEOUT instead of a wait."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topology = fallback_topology(settings)
        # Reading holds the queue's messages until it ends: a second reader at the same
        # time would find them missing and wait for them. One at a time per process.
        self._one_at_a_time = asyncio.Lock()

    async def count(self) -> int:
        # Only the queue's depth: a page that refreshes itself must not deliver the
        # parked messages each time (a broker's default delivery limit counts those).
        async with connected_broker(self._settings, self._topology, CONNECT_TIMEOUT) as broker:
            channel = await broker.open_channel()
            try:
                queue = await channel.declare_queue(
                    self._topology.fallback_parking_queue, passive=True
                )
                return queue.declaration_result.message_count or 0
            except BROKER_ERRORS as error:
                raise BrokerUnavailable(f"RabbitMQ: {readable(error)}") from error
            finally:
                await channel.close()

    async def listing(self, limit: int) -> ParkedListing:
        counts = Counts()
        async with (
            self._one_at_a_time,
            connected_broker(self._settings, self._topology, CONNECT_TIMEOUT) as broker,
        ):
            listed = [
                _shown(v.held)
                async for v in visit(
                    broker, self._topology, ParkedRequest, Selection(limit=limit), counts=counts
                )
            ]
        return ParkedListing(total=counts.total, requests=listed)

    async def replay(self, ids: set[str] | None) -> list[ParkedFallback]:
        async with (
            self._one_at_a_time,
            connected_broker(self._settings, self._topology, CONNECT_TIMEOUT) as broker,
        ):
            replayed = await replay_parked(broker, self._topology, ids)
        return [_shown(r) for r in replayed]

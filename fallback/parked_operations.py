"""The parking queue as the API's console uses it: the same listing and replay as
``txmail dlq``, behind the ``txmail.core.parked`` protocol the command wires in."""

import asyncio

from aio_pika.abc import AbstractRobustConnection

from txmail.core.broker import BROKER_ERRORS, connect_until_up
from txmail.core.errors import BrokerUnavailable
from txmail.core.parked import ParkedFallback, ParkedListing
from txmail.core.readable import readable
from txmail.core.settings import Settings
from txmail.fallback.executor import fallback_topology
from txmail.fallback.held import Counts, Selection, visit
from txmail.fallback.parking import ParkedRequest, replay_parked

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
        # Reading holds the queue's messages until it ends: a second reader at the same
        # time would find them missing and wait for them. One at a time per process.
        self._one_at_a_time = asyncio.Lock()

    async def count(self) -> int:
        # Only the queue's depth: a page that refreshes itself must not deliver the
        # parked messages each time (a broker's default delivery limit counts those).
        connection = await self._connect()
        try:
            channel = await connection.channel()
            topology = fallback_topology(self._settings)
            await topology.declare(channel)
            queue = await channel.declare_queue(topology.fallback_parking_queue, passive=True)
            return queue.declaration_result.message_count or 0
        except BROKER_ERRORS as error:
            raise BrokerUnavailable(f"RabbitMQ: {readable(error)}") from error
        finally:
            await connection.close()

    async def listing(self, limit: int) -> ParkedListing:
        async with self._one_at_a_time:
            connection = await self._connect()
            counts = Counts()
            try:
                listed = [
                    _shown(v.held)
                    async for v in visit(
                        connection,
                        fallback_topology(self._settings),
                        ParkedRequest,
                        Selection(limit=limit),
                        counts=counts,
                    )
                ]
            finally:
                await connection.close()
        return ParkedListing(total=counts.total, requests=listed)

    async def replay(self, ids: set[str] | None) -> list[ParkedFallback]:
        async with self._one_at_a_time:
            connection = await self._connect()
            try:
                replayed = await replay_parked(connection, fallback_topology(self._settings), ids)
            finally:
                await connection.close()
        return [_shown(r) for r in replayed]

    async def _connect(self) -> AbstractRobustConnection:
        try:
            return await asyncio.wait_for(
                connect_until_up(self._settings.amqp_url), CONNECT_TIMEOUT
            )
        except TimeoutError:
            raise BrokerUnavailable(f"RabbitMQ not reachable within {CONNECT_TIMEOUT:g}s") from None

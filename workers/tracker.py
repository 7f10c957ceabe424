"""The tracker: consume events, merge them into the store in batches, ack after commit.

A crash between commit and ack is harmless: the redelivered events carry the same ids
and merging them again changes nothing. A message that is not the contract is
dead-lettered at once; one that fails for a reason we do not know (a bug) is returned
to the queue, whose delivery limit dead-letters it after a few tries, so it never
blocks the messages behind it.
"""

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Sequence
from datetime import datetime

import structlog

from txmail.core.broker import BROKER_ERRORS, Broker
from txmail.core.consumer import Consumer, Received
from txmail.core.events import utc_now
from txmail.core.readable import readable
from txmail.core.topology import Topology
from txmail.workers import metrics
from txmail.workers.batch import Settle, Settlement, apply_batch
from txmail.workers.decisions import publish_decisions
from txmail.workers.inbox import Inbox
from txmail.workers.incoming import Delivery, arrive
from txmail.workers.store.protocol import Store, TrackedEvent
from txmail.workers.watermark import WorkerProgress

log = structlog.get_logger(__name__)


class Tracker:
    def __init__(
        self,
        amqp_url: str,
        topology: Topology,
        store: Store,
        broker: Broker,
        batch_size: int,
        batch_wait: float,
    ) -> None:
        self._topology = topology
        self._store = store
        self._broker = broker
        self._batch_size = batch_size
        self._inbox: Inbox[Delivery] = Inbox(batch_size, batch_wait)
        # Room for the next batch to arrive while this one commits.
        self._consumer = Consumer(
            amqp_url, topology.tracker_queue, 2 * batch_size, topology.declare, self._arrive
        )
        # When the oldest event of the batch being applied reached txmail.
        self._in_hand: datetime | None = None
        # The earliest Braze time of a postback in that batch.
        self._holding_in_hand: datetime | None = None
        # When the newest event of the last batch reached txmail: the queue, first in
        # first out, holds only later ones.
        self._applied_through: datetime | None = None
        # Nothing was delivered for a while, while consuming: the queue is empty. When
        # that was last seen: every event that reached txmail before is applied.
        self._caught_up = False
        self._caught_up_at: datetime | None = None
        # For the watermark: this process, and the latest Braze time it applied (capped
        # at the postback's arrival) and when the latest postback with one arrived.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._event_time: datetime | None = None
        self._heard_at: datetime | None = None

    @property
    def is_consuming(self) -> bool:
        return self._consumer.is_consuming

    def progress(self, now: datetime) -> WorkerProgress:
        """What this worker has applied, for the deployment's watermark."""
        return WorkerProgress(
            self.worker_id,
            now,
            self.applied_until(now),
            self._event_time,
            self._heard_at,
            self.holding(),
        )

    def holding(self) -> datetime | None:
        """The earliest Braze time of a postback held, in hand or waiting, not applied."""
        held = [d.braze_time for d in self._inbox.waiting() if d.braze_time is not None]
        if self._holding_in_hand is not None:
            held.append(self._holding_in_hand)
        return min(held, default=None)

    def applied_until(self, now: datetime) -> datetime | None:
        """Every event that reached txmail before this is applied, as far as this worker
        can tell; None before it knows anything (at start, the queue may hold a backlog).

        While a backlog drains this is in the past, so that a deadline is not taken for
        passed while the `delivered` that arrived in time still waits in the queue.
        """
        held = [] if self._in_hand is None else [self._in_hand]
        if (waiting := self._inbox.oldest()) is not None:
            held.append(waiting.received_at)
        if held:
            return min(now, *held)
        if self._caught_up and self._consumer.is_consuming:
            return now
        # Not consuming, or not known to be caught up: events may wait in the queue, so
        # only what is known to be applied counts; deadlines after it wait.
        known = [t for t in (self._applied_through, self._caught_up_at) if t is not None]
        return min(now, max(known)) if known else None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is finished first."""
        self._consumer.start()
        try:
            while not stop.is_set():
                polled_at, session = utc_now(), self._consuming_session()
                batch = await self._inbox.next_batch(idle_timeout=0.2)
                # Caught up only if one consumer was up the whole time nothing came: not
                # while it is gone, nor just after it came back (the backlog is on its way).
                self._caught_up = (
                    not batch and session is not None and session == self._consuming_session()
                )
                if self._caught_up:
                    self._caught_up_at = polled_at
                if batch:
                    await self._handle(batch, stop)
        finally:
            # Whatever is still unacked goes back to the queue for another worker.
            await self._consumer.close()

    def _consuming_session(self) -> int | None:
        return self._consumer.times_up if self._consumer.is_consuming else None

    async def _arrive(self, message: Received) -> None:
        """The consumer callback: decoded at once, so that its Braze time counts."""
        await self._inbox.put(arrive(message, utc_now()))

    async def _handle(self, batch: Sequence[Delivery], stop: asyncio.Event) -> None:
        # Set before the first await, so that no sweep sees the batch neither waiting
        # in the inbox nor in hand.
        arrivals = [d.received_at for d in batch]
        self._in_hand = min(arrivals)
        self._holding_in_hand = min(
            (d.braze_time for d in batch if d.braze_time is not None), default=None
        )
        metrics.BATCH_SIZE.observe(len(batch))
        started = time.perf_counter()
        try:
            await self._handle_in_hand(batch, stop)
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        finally:
            self._in_hand = self._holding_in_hand = None
            self._applied_through = max(arrivals)

    async def _handle_in_hand(self, batch: Sequence[Delivery], stop: asyncio.Event) -> None:
        applied = await apply_batch(self._store, [d.decoded for d in batch], stop)
        self._note_applied([batch[i] for i in applied.acked()])
        # Acked one by one if any is left unsettled: a multiple ack would take it too.
        one_ack = all(s.kind is not Settle.LEAVE for s in applied.settlements)
        for delivery, settlement in zip(batch, applied.settlements, strict=True):
            await _settle_as(delivery, settlement, one_ack)
        if one_ack and (acked := applied.acked()):
            # One ack for the whole batch: every earlier delivery on this channel is in
            # it or already settled, because batches are handled one after another.
            await _settle(batch[acked[-1]].message.ack(multiple=True))
        metrics.count_decided(applied.decided)
        await publish_decisions(self._broker, self._store, applied.decided)

    def _note_applied(self, deliveries: list[Delivery]) -> None:
        """Advance this worker's Braze time with committed postbacks, before the batch
        leaves its hands: a sweep never sees the batch neither held nor counted."""
        applied_at = utc_now()
        for delivery in deliveries:
            if isinstance(delivery.decoded, TrackedEvent):
                metrics.count_applied(delivery.decoded)
            stamped = delivery.braze_time
            if stamped is None:
                continue  # registrations and attempts are not Braze's stream
            metrics.observe_lag(stamped, applied_at)
            if self._event_time is None or stamped > self._event_time:
                self._event_time = stamped
            if self._heard_at is None or delivery.received_at > self._heard_at:
                self._heard_at = delivery.received_at


async def _settle(settling: Awaitable[None]) -> None:
    """Ack, nack or reject; on a channel that died since delivery there is nothing to do:
    the broker hands the message out again and its event id makes that harmless."""
    try:
        await settling
    except BROKER_ERRORS as error:
        log.info("could not settle a delivery; it will be redelivered", error=readable(error))


async def _settle_as(delivery: Delivery, settlement: Settlement, one_ack: bool) -> None:
    message, error = delivery.message, settlement.error
    if settlement.kind is Settle.DEAD_LETTER:
        log.error(
            "dead-lettering a message that is not the contract",
            reason=str(error),
            type=message.type,
            message_id=message.message_id,
            routing_key=message.routing_key,
        )
        metrics.REFUSED_DEAD_LETTER.inc()
        await _settle(message.reject(requeue=False))
    elif settlement.kind is Settle.REQUEUE:
        if isinstance(delivery.decoded, TrackedEvent):
            log.error(
                "cannot apply event; returning it to the queue, whose delivery limit "
                "dead-letters it",
                error=readable(error) if error else None,
                event_id=delivery.decoded.event_id,
                message_key=delivery.decoded.message_key,
                redelivered=message.redelivered,
            )
        else:
            log.error(
                "cannot decode message; returning it to the queue, whose delivery limit "
                "dead-letters it",
                type=message.type,
                message_id=message.message_id,
                exc_info=error,
            )
        metrics.REFUSED_REQUEUE.inc()
        await _settle(message.nack(requeue=True))
    elif settlement.kind is Settle.ACK and not one_ack:
        await _settle(message.ack())

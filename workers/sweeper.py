"""The sweeper in every worker: due deadlines, decisions not yet published, retention.

Deadlines are an indexed column, so a sweep reads only what is due; claiming is the
store's compare-and-set, so any number of workers may sweep at once.
"""

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from txmail.core.broker import Broker
from txmail.core.events import utc_now
from txmail.core.stopping import pause
from txmail.workers import metrics
from txmail.workers.decisions import publish_decisions
from txmail.workers.store.protocol import PendingRequest, Store, StoreUnavailable
from txmail.workers.watermark import FORGET_AFTER, WatermarkRule, WorkerProgress, due_by

log = structlog.get_logger(__name__)

CLAIM_BATCH = 500
PURGE_BATCH = 500  # small, so a purge never holds locks for long
PURGE_INTERVAL = 60.0


class Progress(Protocol):
    def progress(self, now: datetime) -> WorkerProgress:
        """What this worker has applied so far."""


class Sweeper:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        interval: timedelta,
        retention: timedelta,
        progress: Progress,
        watermark: WatermarkRule,
    ) -> None:
        self._store = store
        self._broker = broker
        # A deadline is due only once the deployment has applied what Braze stamped
        # before it (workers/watermark.py): else a backlog, in front of the ingress or
        # in the queue, would time out messages whose `delivered` is still on its way.
        self._progress = progress
        self._watermark = watermark
        self._interval = interval.total_seconds()
        self._retention = retention

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last_purge = -PURGE_INTERVAL
        sweeps = 0
        while not stop.is_set():
            try:
                if self._broker.is_ready:  # else a claim could only wait for a retry
                    await self.sweep(utc_now())
                if sweeps % metrics.TALLY_EVERY_SWEEPS == 0:
                    tally = await self._store.tally()
                    metrics.set_tally(tally.outcomes, tally.pending_deadlines)
                if loop.time() - last_purge >= PURGE_INTERVAL:
                    last_purge = loop.time()
                    await self.purge(utc_now())
            except StoreUnavailable as error:
                log.warning("store unavailable, sweeping again later", error=str(error))
            except Exception:
                log.exception("sweep failed, sweeping again later")
            sweeps += 1
            await pause(stop, self._interval)

    async def sweep(self, now: datetime) -> None:
        """Decide every due deadline, then retry publishes that were not confirmed."""
        async for claimed in sweep_claims(self._store, self._progress, self._watermark, now):
            await publish_decisions(self._broker, self._store, claimed)

    async def purge(self, now: datetime) -> None:
        total = 0
        while True:
            purged = await self._store.purge(now - self._retention, PURGE_BATCH)
            total += purged
            if purged < PURGE_BATCH:
                break
        if total:
            log.info("purged messages past retention", count=total)


async def sweep_claims(
    store: Store, progress: Progress, watermark: WatermarkRule, now: datetime
) -> AsyncIterator[list[PendingRequest]]:
    """What a sweep publishes, batch by batch: the deadlines due, decided now, then the
    decisions whose publish was not confirmed in time."""
    claiming = now
    while (due := await _due_by(store, progress, watermark, claiming)) is not None:
        claimed = await store.claim_due(claiming, CLAIM_BATCH, due)
        metrics.count_fired(claimed)
        yield claimed
        if len(claimed) < CLAIM_BATCH:
            break
        # A long sweep (thousands due after an outage) reports again between batches,
        # so that the other workers do not take this one for dead meanwhile.
        claiming = utc_now()
    while True:
        overdue = await store.claim_unpublished(now, CLAIM_BATCH)
        yield overdue
        if len(overdue) < CLAIM_BATCH:
            break


async def _due_by(
    store: Store, progress: Progress, watermark: WatermarkRule, now: datetime
) -> datetime | None:
    """Report this worker's progress and read every worker's: the deployment's bound."""
    rows = await store.report_progress(progress.progress(now), now - FORGET_AFTER)
    return due_by(rows, now, watermark)

"""The state store, recording what each change tells about its sends' health.

Wraps the workers' store: after ``apply`` (postbacks) and ``claim_due`` (timeouts)
commit, their pieces go to the health store, before the tracker acks the batch. A
failure there raises like the store's own, so the tracker applies the batch again
(a no-op for the store, whose events carry their ids) and records it again (a merge
that copies do not change): no figure lost, none counted twice. The one gap: a timeout
claimed just before the health store fails is decided and published, but not counted.
"""

from collections.abc import Sequence
from datetime import datetime

from txmail.workers.health.observations import observe
from txmail.workers.health.store import HealthStore
from txmail.workers.store.protocol import (
    MessageView,
    PendingRequest,
    Store,
    StoreCounts,
    TrackedEvent,
)
from txmail.workers.watermark import WorkerProgress


class HealthRecordingStore:
    def __init__(self, store: Store, health: HealthStore) -> None:
        self._store = store
        self._health = health

    async def apply(self, events: Sequence[TrackedEvent], now: datetime) -> list[PendingRequest]:
        decided = await self._store.apply(events, now)
        await self._health.record(observe(events, decided))
        return decided

    async def claim_due(
        self, now: datetime, limit: int, due_by: datetime | None = None
    ) -> list[PendingRequest]:
        claimed = await self._store.claim_due(now, limit, due_by)
        await self._health.record(observe((), claimed))
        return claimed

    async def report_progress(
        self, progress: WorkerProgress, forget_before: datetime
    ) -> list[WorkerProgress]:
        return await self._store.report_progress(progress, forget_before)

    async def claim_unpublished(self, now: datetime, limit: int) -> list[PendingRequest]:
        return await self._store.claim_unpublished(now, limit)

    async def mark_published(self, message_keys: Sequence[str], now: datetime) -> None:
        await self._store.mark_published(message_keys, now)

    async def purge(self, created_before: datetime, limit: int) -> int:
        return await self._store.purge(created_before, limit)

    async def find(
        self, *, dispatch_id: str | None = None, external_send_id: str | None = None
    ) -> MessageView | None:
        return await self._store.find(dispatch_id=dispatch_id, external_send_id=external_send_id)

    async def counts(self) -> StoreCounts:
        return await self._store.counts()

    async def ping(self) -> None:
        await self._store.ping()

    async def close(self) -> None:
        await self._store.close()

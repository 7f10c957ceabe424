"""Invariant 3 (docs/architecture.md) under contention: the deadline and a late
`delivered` race; sweepers share."""

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

from tests.support.factories import postback
from txmail.workers.state import Outcome
from txmail.workers.store import open_store
from txmail.workers.store.protocol import PendingRequest, Store
from txmail.workers.timeouts import DeliveryTimeouts

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMEOUTS = DeliveryTimeouts(timedelta(minutes=10))
DUE_NOW = (NOW - TIMEOUTS.default).isoformat()  # sent exactly one timeout ago


async def _sweep_until_empty(store: Store, limit: int) -> list[PendingRequest]:
    claimed: list[PendingRequest] = []
    while batch := await store.claim_due(NOW, limit):
        claimed += batch
    return claimed


async def test_delivered_at_the_deadline_never_wins_twice(database_url: str) -> None:
    worker = await open_store(database_url, TIMEOUTS)
    sweeper = await open_store(database_url, TIMEOUTS)
    ids = [f"race-{i}" for i in range(60)]
    await worker.apply([postback(d, "sent", NOW, sent_at=DUE_NOW) for d in ids], NOW)

    async def deliver(dispatch_id: str) -> None:
        assert await worker.apply([postback(dispatch_id, "delivered", NOW)], NOW) == []

    results = await asyncio.gather(
        *(deliver(d) for d in ids), *(sweeper.claim_due(NOW, 1) for _ in ids)
    )
    claimed = [p.request.dispatch_id for batch in results if batch for p in batch]
    claimed += [p.request.dispatch_id for p in await _sweep_until_empty(sweeper, 10)]
    assert len(claimed) == len(set(claimed))
    for dispatch_id in ids:
        message = await worker.find(dispatch_id=dispatch_id)
        assert message is not None
        if dispatch_id in claimed:
            assert message.outcome == Outcome.DELIVERED_LATE
            assert message.decision is not None
        else:
            assert message.outcome == Outcome.DELIVERED
            assert message.decision is None
    assert (await worker.counts()).decisions == len(claimed)
    await worker.close()
    await sweeper.close()


async def test_several_sweepers_on_postgres_claim_each_deadline_once(
    postgres_schema_url: str,
) -> None:
    setup = await open_store(postgres_schema_url, TIMEOUTS)
    total = 3000
    for start in range(0, total, 500):
        sent = [
            postback(f"due-{i}", "sent", NOW, sent_at=DUE_NOW) for i in range(start, start + 500)
        ]
        await setup.apply(sent, NOW)
    sweepers = await asyncio.gather(*(open_store(postgres_schema_url, TIMEOUTS) for _ in range(4)))
    batches = await asyncio.gather(*(_sweep_until_empty(s, 50) for s in sweepers))
    claims = Counter(p.message_key for batch in batches for p in batch)
    assert len(claims) == total
    assert set(claims.values()) == {1}
    assert all(batches), "every sweeper got a share: none waited on another's locks"
    counts = await setup.counts()
    assert (counts.decisions, counts.pending_deadlines) == (total, 0)
    for store in (setup, *sweepers):
        await store.close()

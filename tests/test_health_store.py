"""The deployment's one health state, on SQLite and PostgreSQL: the pieces of a send
merged in any order, several workers judging at once record a change once, the outbox
of changes, learned timeouts kept across a restart. Sends are recorded the way the
tracker records them: postbacks applied to the store."""

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from tests.support.health import NOW, RULES, pieces
from txmail.core.health_settings import AutoBounds
from txmail.workers.health.evaluate import Health
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import DeliveryTimeouts

FIXED = DeliveryTimeouts(timedelta(minutes=10))
EVERY = timedelta(seconds=10)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await open_store(database_url, FIXED)
    yield store
    await store.close()


async def test_the_pieces_of_a_send_in_any_order_and_copies_make_one_send(store: Store) -> None:
    observed = [p for i in range(12) for p in pieces(f"send:{i}", 30 + i)]
    shuffled = observed * 2
    random.Random(7).shuffle(shuffled)  # noqa: S311 -- an order, not a secret
    for piece in shuffled:
        await store.apply([piece], NOW)
    await store.health.judge(NOW, RULES, EVERY)
    overall = (await store.health.report()).overall
    assert overall is not None
    assert overall.figures["sends"] == 12
    assert overall.figures["p95_latency_seconds"] == 41  # the 12th of 30..41 s
    assert overall.figures["p95_lag_seconds"] == 3  # the slowest postback of each send


async def test_several_workers_judging_at_once_record_one_change(database_url: str) -> None:
    workers = [await open_store(database_url, FIXED) for _ in range(4)]
    try:
        await workers[0].apply([p for i in range(20) for p in pieces(f"send:{i}", 120)], NOW)
        judged = await asyncio.gather(*(w.health.judge(NOW, RULES, EVERY) for w in workers))
        # One of them judged: Braze degraded overall and for campaign "c", once each.
        assert sorted(len(changes) for changes in judged) == [0, 0, 0, 2]
        # Judged again later, still degraded: no new change.
        later = NOW + EVERY
        assert await workers[1].health.judge(later, RULES, EVERY) == []
        report = await workers[2].health.report()
    finally:
        for worker in workers:
            await worker.close()
    assert report.overall is not None
    assert report.overall.health is Health.DEGRADED
    assert sorted((c.campaign_api_id or "", c.health) for c in report.recent_changes) == [
        ("", "degraded"),
        ("c", "degraded"),
    ]


async def test_a_change_is_handed_out_until_it_is_marked_published(store: Store) -> None:
    await store.apply([p for i in range(20) for p in pieces(f"send:{i}", 120, "")], NOW)
    health = store.health
    (change,) = await health.judge(NOW, RULES, EVERY)
    lease = timedelta(seconds=10)
    assert [c.change_id for c in await health.claim_unpublished(NOW, lease, 10)] == [
        change.change_id
    ]
    assert await health.claim_unpublished(NOW + timedelta(seconds=5), lease, 10) == []
    again = await health.claim_unpublished(NOW + timedelta(seconds=11), lease, 10)
    assert [c.change_id for c in again] == [change.change_id]
    await health.mark_published([change.change_id], NOW + timedelta(seconds=12))
    assert await health.claim_unpublished(NOW + timedelta(minutes=5), lease, 10) == []


async def test_learned_timeouts_are_kept_across_a_restart(database_url: str) -> None:
    bounds = AutoBounds(min=timedelta(seconds=30), max=timedelta(minutes=30))
    timeouts = DeliveryTimeouts(timedelta(minutes=10), auto={None: bounds})
    first = await open_store(database_url, timeouts)
    try:
        await first.apply([p for i in range(20) for p in pieces(f"send:{i}", 100, "c")], NOW)
        await first.health.judge(NOW, RULES, EVERY)
    finally:
        await first.close()
    fresh = DeliveryTimeouts(timedelta(minutes=10), auto={None: bounds})
    restarted = await open_store(database_url, fresh)
    try:
        await restarted.health.refresh_learned()
    finally:
        await restarted.close()
    assert fresh.for_campaign("c") == timedelta(seconds=200)  # p99 100 s x 2
    assert fresh.for_campaign("other") == timedelta(minutes=10)  # nothing learned yet

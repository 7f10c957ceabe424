"""The deployment's one health state, on SQLite and PostgreSQL: the pieces of a send
merged in any order, several workers judging at once record a change once, the outbox
of changes, learned timeouts kept across a restart."""

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from txmail.core.health_settings import AutoBounds, HealthRules
from txmail.workers.health.evaluate import Health
from txmail.workers.health.observations import SendObservation
from txmail.workers.health.store import HealthStore, open_health_store
from txmail.workers.store import migrate_schema
from txmail.workers.timeouts import DeliveryTimeouts

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RULES = HealthRules(
    window=timedelta(minutes=5),
    min_sends=10,
    degraded_p95=timedelta(seconds=60),
    recovered_p95=timedelta(seconds=20),
)
FIXED = DeliveryTimeouts(timedelta(minutes=10))
EVERY = timedelta(seconds=10)


@pytest.fixture
async def health(database_url: str) -> AsyncIterator[HealthStore]:
    await migrate_schema(database_url, FIXED)
    store = open_health_store(database_url)
    yield store
    await store.close()


def pieces(key: str, latency: float, campaign: str = "c") -> list[SendObservation]:
    """The `sent` and `delivered` of one send, delivered a minute before NOW."""
    delivered_at = NOW - timedelta(minutes=1)
    sent_at = delivered_at - timedelta(seconds=latency)
    return [
        SendObservation(key, campaign, sent_at=sent_at, lag=timedelta(seconds=1)),
        SendObservation(key, campaign, delivered_at=delivered_at, lag=timedelta(seconds=3)),
    ]


async def test_the_pieces_of_a_send_in_any_order_and_copies_make_one_send(
    health: HealthStore,
) -> None:
    observed = [p for i in range(12) for p in pieces(f"send:{i}", 30 + i)]
    shuffled = observed * 2
    random.Random(7).shuffle(shuffled)  # noqa: S311 -- an order, not a secret
    for piece in shuffled:
        await health.record([piece])
    await health.judge(NOW, RULES, FIXED, EVERY)
    overall = (await health.report()).overall
    assert overall is not None
    assert overall.figures["sends"] == 12
    assert overall.figures["p95_latency_seconds"] == 41  # the 12th of 30..41 s
    assert overall.figures["p95_lag_seconds"] == 3  # the slowest postback of each send


async def test_several_workers_judging_at_once_record_one_change(database_url: str) -> None:
    await migrate_schema(database_url, FIXED)
    workers = [open_health_store(database_url) for _ in range(4)]
    try:
        await workers[0].record([p for i in range(20) for p in pieces(f"send:{i}", 120)])
        judged = await asyncio.gather(*(w.judge(NOW, RULES, FIXED, EVERY) for w in workers))
        # One of them judged: Braze degraded overall and for campaign "c", once each.
        assert sorted(len(changes) for changes in judged) == [0, 0, 0, 2]
        # Judged again later, still degraded: no new change.
        later = NOW + EVERY
        assert await workers[1].judge(later, RULES, FIXED, EVERY) == []
        report = await workers[2].report()
    finally:
        for worker in workers:
            await worker.close()
    assert report.overall is not None
    assert report.overall.health is Health.DEGRADED
    assert sorted((c.campaign_api_id or "", c.health) for c in report.recent_changes) == [
        ("", "degraded"),
        ("c", "degraded"),
    ]


async def test_a_change_is_handed_out_until_it_is_marked_published(health: HealthStore) -> None:
    await health.record([p for i in range(20) for p in pieces(f"send:{i}", 120, "")])
    (change,) = await health.judge(NOW, RULES, FIXED, EVERY)
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
    await migrate_schema(database_url, FIXED)
    bounds = AutoBounds(min=timedelta(seconds=30), max=timedelta(minutes=30))
    timeouts = DeliveryTimeouts(timedelta(minutes=10), auto={None: bounds})
    first = open_health_store(database_url)
    try:
        await first.record([p for i in range(20) for p in pieces(f"send:{i}", 100, "c")])
        await first.judge(NOW, RULES, timeouts, EVERY)
    finally:
        await first.close()
    restarted = open_health_store(database_url)
    try:
        learned = await restarted.learned()
    finally:
        await restarted.close()
    assert learned == {"c": timedelta(seconds=200)}  # p99 100 s x 2
    fresh = DeliveryTimeouts(timedelta(minutes=10), auto={None: bounds})
    fresh.learned.replace(learned)
    assert fresh.for_campaign("c") == timedelta(seconds=200)
    assert fresh.for_campaign("other") == timedelta(minutes=10)  # nothing learned yet

"""The deployment's one health state, on SQLite and PostgreSQL: the pieces of a send
merged in any order, several workers judging at once record a change once, the outbox
of changes, learned timeouts kept across a restart, the health a timeout is claimed
with. Sends are recorded the way the tracker records them: postbacks applied to the
store."""

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from tests.support.factories import postback
from tests.support.health import NOW, RULES, pieces
from txmail.core.health_settings import AutoBounds
from txmail.workers.health.evaluate import Health
from txmail.workers.status import describe
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store, TrackedEvent
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


def late_send(send: str, campaign: str | None) -> list[TrackedEvent]:
    """A `sent` that reached txmail at NOW, 11 minutes after Braze sent it: past FIXED."""
    sent_at = (NOW - timedelta(minutes=11)).isoformat()
    ids = {"external_send_id": send, "campaign_api_id": campaign}
    return [postback(f"d-{send}", "sent", NOW, sent_at=sent_at, **ids)]


async def test_a_timeout_is_stamped_with_brazes_health_for_its_campaign_when_claimed(
    store: Store,
) -> None:
    # Campaign "slow" degraded alone: 10 slow sends are too few to move the overall p95.
    await store.apply(
        [p for i in range(10) for p in pieces(f"slow:{i}", 120, "slow")]
        + [p for i in range(290) for p in pieces(f"fast:{i}", 2, "fast")],
        NOW,
    )
    changes = await store.health.judge(NOW, RULES, EVERY)
    assert [c.campaign_api_id for c in changes] == ["slow"]
    await store.apply(late_send("a", "slow") + late_send("b", "fast") + late_send("c", None), NOW)
    claimed = await store.claim_due(NOW, 10)
    stamped = {p.request.external_send_id: p.request.braze_health for p in claimed}
    assert stamped == {"a": "degraded", "b": "healthy", "c": "healthy"}
    # Stored with the decision, before anything is published.
    message = await store.find(external_send_id="a")
    assert message is not None
    assert message.decision is not None
    assert message.decision.request is not None
    assert message.decision.request.braze_health == "degraded"
    assert "  on the deadline   2026-11-29T11:59:00+00:00, Braze degraded" in describe(message)


async def test_a_republished_timeout_keeps_the_health_it_was_claimed_with(store: Store) -> None:
    """Invariant 3: the copy published again must match the rule the first matched."""
    await store.apply(late_send("a", "c"), NOW)
    (first,) = await store.claim_due(NOW, 10)
    assert first.request.braze_health == "healthy"
    await store.apply([p for i in range(20) for p in pieces(f"send:{i}", 120, "c")], NOW)
    assert len(await store.health.judge(NOW, RULES, EVERY)) == 2  # degraded, overall and "c"
    later = NOW + timedelta(minutes=1)
    await store.apply(late_send("b", "c"), later)
    (second,) = await store.claim_due(later, 10)
    assert second.request.braze_health == "degraded"  # the health did change
    republished = await store.claim_unpublished(later, 10)
    assert [p.request for p in republished if p.message_key == first.message_key] == [first.request]

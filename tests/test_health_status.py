"""Braze's health as people and scripts read it: ``txmail status --health`` and
``GET /v1/health/braze``; and the learned timeout a message's deadline was armed with."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.factories import postback
from tests.test_api import serving
from tests.test_health_store import RULES, pieces
from txmail.cli import main
from txmail.core.health_settings import AutoBounds
from txmail.workers.api import create_api_app
from txmail.workers.health.store import open_health_store
from txmail.workers.status import describe
from txmail.workers.store import migrate_schema, open_store
from txmail.workers.timeouts import DeliveryTimeouts, load_health_rules, load_timeouts

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
BOUNDS = AutoBounds(min=timedelta(minutes=1), max=timedelta(minutes=30))


def learning() -> DeliveryTimeouts:
    return DeliveryTimeouts(timedelta(minutes=10), auto={None: BOUNDS})


async def degraded(database_url: str) -> None:
    """Twenty sends of campaign "c" delivered in 2 minutes each, judged."""
    await migrate_schema(database_url, learning())
    health = open_health_store(database_url)
    try:
        await health.record([p for i in range(20) for p in pieces(f"send:{i}", 120)])
        await health.judge(NOW, RULES, learning(), timedelta(seconds=10))
    finally:
        await health.close()


def test_status_health_shows_the_judgement_the_learned_timeouts_and_the_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'txmail.db'}"
    asyncio.run(degraded(url))
    monkeypatch.setenv("TXMAIL_DATABASE_URL", url)
    assert main(["status", "--health"]) == 0
    text = capsys.readouterr().out
    assert "  overall                  degraded since 2026-11-29T12:00:00+00:00: 20 sends" in text
    assert "p95 2m, timed out 0.0%" in text
    assert "  c                        degraded" in text
    assert "  c                        4m from 20 delivered sends" in text  # p99 2m x 2
    assert "Braze degraded: p95 sent→delivered 120s over 60s on 20 sends" in text
    assert main(["status", "--health", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"]["health"] == "degraded"
    assert report["learned_timeouts"][0]["timeout_seconds"] == 240


def test_status_takes_a_message_id_or_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TXMAIL_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    assert main(["status"]) == 2
    assert main(["status", "d1", "--health"]) == 2
    assert capsys.readouterr().err.count("status takes a message id, or --health") == 2
    assert main(["status", "--health"]) == 2  # no database yet: a message, no traceback
    assert "run `txmail migrate` or start a worker" in capsys.readouterr().err


async def test_the_api_answers_brazes_health(database_url: str) -> None:
    await degraded(database_url)
    store = await open_store(database_url, learning(), read_only=True)
    health = open_health_store(database_url, read_only=True)
    try:
        async with (
            serving(create_api_app(store, health=health)) as api,
            aiohttp.ClientSession() as session,
            session.get(f"{api}/v1/health/braze") as response,
        ):
            assert response.status == 200
            report = await response.json()
    finally:
        await health.close()
        await store.close()
    assert report["overall"]["health"] == "degraded"
    assert report["overall"]["figures"]["p95_latency_seconds"] == 120
    assert [c["campaign_api_id"] for c in report["campaigns"]] == ["c"]
    assert {c["health"] for c in report["recent_changes"]} == {"degraded"}


async def test_a_deadline_keeps_the_learned_timeout_it_was_armed_with(database_url: str) -> None:
    timeouts = learning()
    timeouts.learned.replace({"c": timedelta(minutes=4)})
    store = await open_store(database_url, timeouts)
    sent_at = NOW - timedelta(seconds=5)
    meta = {"campaign_api_id": "c"}
    try:
        await store.apply([postback("d1", "sent", NOW, sent_at=sent_at.isoformat(), **meta)], NOW)
        timeouts.learned.replace({"c": timedelta(minutes=20)})  # learned again since
        await store.apply([postback("d1", "processed", NOW, **meta)], NOW)
        await store.apply([postback("d2", "sent", NOW, sent_at=sent_at.isoformat(), **meta)], NOW)
        first = await store.find(dispatch_id="d1")
        second = await store.find(dispatch_id="d2")
    finally:
        await store.close()
    assert first is not None
    assert second is not None
    assert first.learned_timeout == timedelta(minutes=4)
    assert first.deadline == sent_at + timedelta(minutes=4)
    assert second.learned_timeout == timedelta(minutes=20)
    assert '  learned timeout   4m (delivery_timeout = "auto")' in describe(first)


def test_auto_timeouts_are_read_with_their_bounds(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[tracking]\ndelivery_timeout = "auto"\nmax_delivery_timeout = "20m"\n'
        '[tracking.campaigns.f]\ndelivery_timeout = "2m"\n'
        '[tracking.campaigns.a]\ndelivery_timeout = "auto"\n'
        'min_delivery_timeout = "30s"\nmax_delivery_timeout = "5m"\n'
        "[health]\nmin_sends = 50\n"
    )
    timeouts = load_timeouts(timedelta(minutes=10), rules)
    assert timeouts.for_campaign("f") == timedelta(minutes=2)
    assert timeouts.auto_bounds("f") is None
    assert timeouts.for_campaign("a") == timedelta(minutes=5)  # the default, within 30s..5m
    assert timeouts.for_campaign("other") == timedelta(minutes=10)  # within 1m..20m
    timeouts.learned.replace({"a": timedelta(minutes=3)})
    assert timeouts.for_campaign("a") == timedelta(minutes=3)
    assert load_health_rules(rules).min_sends == 50

"""Braze's health as people and scripts read it: ``txmail status --health`` (the API's
``GET /v1/health/braze`` is in test_api.py); and the learned timeout a message's
deadline was armed with."""

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support.factories import postback
from tests.support.health import NOW, degraded, learning
from txmail.cli import main
from txmail.workers.status import describe
from txmail.workers.store import open_store


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

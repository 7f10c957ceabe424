"""The read side: the HTTP API and ``txmail status``."""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.factories import postback, registration
from txmail.cli import build_parser
from txmail.settings import Settings
from workers.api import create_api_app
from workers.store import open_store
from workers.store.protocol import Store
from workers.timeouts import DeliveryTimeouts

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await open_store(database_url, DeliveryTimeouts(timedelta(minutes=10)))
    await opened.apply(
        [
            registration(NOW, external_send_id="order-7", recipient={"email": "c@example.com"}),
            postback("d7", "sent", NOW, external_send_id="order-7"),
            postback(
                "d7",
                "bounced",
                NOW + timedelta(seconds=1),
                external_send_id="order-7",
                reason="550 5.1.1 no such user",
                bounced_at="2020-08-31T18:58:43.000+00:00",
            ),
        ],
        NOW,
    )
    yield opened
    await opened.close()


@pytest.fixture
async def api(store: Store) -> AsyncIterator[str]:
    runner = web.AppRunner(create_api_app(store))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_message_by_dispatch_id_and_by_external_send_id(api: str) -> None:
    status, by_dispatch = await _get(f"{api}/v1/messages/d7")
    assert status == 200
    assert by_dispatch["outcome"] == "bounced"
    assert by_dispatch["reason"] == "550 5.1.1 no such user"
    decision = by_dispatch["decision"]
    assert isinstance(decision, dict)
    assert decision["trigger"] == "bounced"
    timeline = by_dispatch["timeline"]
    assert isinstance(timeline, list)
    assert [e["label"] for e in timeline] == ["registered", "sent", "bounced"]
    status, by_send = await _get(f"{api}/v1/messages?external_send_id=order-7")
    assert (status, by_send) == (200, by_dispatch)


async def test_unknown_and_malformed_lookups_are_json_errors(api: str) -> None:
    assert await _get(f"{api}/v1/messages/nope") == (
        404,
        {"error": "not_found", "message": "no message is known for dispatch_id 'nope'"},
    )
    status, body = await _get(f"{api}/v1/messages")
    assert (status, body["error"]) == (400, "bad_request")
    status, body = await _get(f"{api}/v1/nothing-here")
    assert (status, body["error"]) == (404, "not_found")


async def test_ids_no_message_can_have_are_not_found_on_either_store(api: str) -> None:
    # PostgreSQL refuses NUL in text: the lookup must not become a 500 there.
    for path in ("/v1/messages/a%00b", "/v1/messages?external_send_id=a%00b"):
        status, body = await _get(f"{api}{path}")
        assert (status, body["error"]) == (404, "not_found")


async def test_health_and_readiness(api: str) -> None:
    assert await _get(f"{api}/healthz") == (200, {"status": "ok"})
    assert await _get(f"{api}/readyz") == (200, {"status": "ready"})


async def test_status_command_for_people_and_scripts(
    store: Store,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings(database_url=database_url)
    assert await _status(settings, "order-7") == 0
    text = capsys.readouterr().out
    assert text.startswith("bounced: 550 5.1.1 no such user")
    assert "recipient         c@example.com" in text
    assert "bounced  (Braze: 2020-08-31T18:58:43.000+00:00)" in text
    assert await _status(settings, "d7", "--json") == 0
    assert json.loads(capsys.readouterr().out)["dispatch_id"] == "d7"
    assert await _status(settings, "unknown-id") == 1
    assert "nothing is known about 'unknown-id'" in capsys.readouterr().err


async def _status(settings: Settings, *argv: str) -> int:
    # Parsed as the shell would; not through main(), which sets up process-wide logging.
    args = build_parser().parse_args(["status", *argv])
    # The command runs its own event loop, as it does from a shell.
    code: int = await asyncio.to_thread(args.handler, settings, args)
    return code


async def test_status_with_a_database_url_that_cannot_work_says_why_and_exits_2(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.touch()
    unusable = [
        postgres_url.rsplit("/", 1)[0] + "/no_such_database_for_txmail",
        postgres_url.replace("postgres@", "no_such_role_for_txmail@", 1),
        f"sqlite:///{a_file}/txmail.db",  # its directory cannot be made
    ]
    for url in unusable:
        assert await _status(Settings(database_url=url), "order-7") == 2, url
        err = capsys.readouterr().err
        assert err.startswith("txmail: "), err
        assert "Traceback" not in err


async def test_status_does_not_create_a_database_where_there_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped path must not be answered with "nothing is known" from a new, empty file.
    typo = tmp_path / "typo" / "txmail.db"
    assert await _status(Settings(database_url=f"sqlite:///{typo}"), "order-7") == 2
    assert str(typo) in capsys.readouterr().err
    assert not typo.exists()
    assert not typo.parent.exists()


async def test_a_premature_fallback_is_shown_with_the_deadline_it_was_decided_on(
    store: Store, api: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sent_at = NOW - timedelta(minutes=11)
    await store.apply([postback("early", "sent", NOW, sent_at=sent_at.isoformat())], NOW)
    await store.claim_due(NOW, 10)
    in_time = (sent_at + timedelta(minutes=9)).isoformat()
    await store.apply([postback("early", "delivered", NOW, delivered_at=in_time)], NOW)
    status, message = await _get(f"{api}/v1/messages/early")
    assert (status, message["outcome"]) == (200, "premature_fallback")
    decision = message["decision"]
    assert isinstance(decision, dict)
    assert datetime.fromisoformat(str(decision["deadline"])) == sent_at + timedelta(minutes=10)
    assert await _status(Settings(database_url=database_url), "early") == 0
    text = capsys.readouterr().out
    assert text.startswith("premature fallback")
    assert "on the deadline   2026-03-01T11:59:00+00:00" in text

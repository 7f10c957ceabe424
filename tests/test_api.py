"""The read side: the HTTP API and ``txmail status``."""

import asyncio
import base64
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.support.factories import postback, registration
from tests.support.health import degraded, learning
from tests.support.ports import free_port
from tests.support.processes import spawn
from tests.support.raw_http import raw_request
from tests.support.waiting import wait_until
from txmail.cli import build_parser, exit_code_of
from txmail.core.command import Command, Configuration
from txmail.core.settings import Settings
from txmail.workers.api import api_host, api_tokens, create_api_app
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import DeliveryTimeouts

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


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def api(store: Store) -> AsyncIterator[str]:
    async with serving(create_api_app(store)) as url:
        yield url


WRITE_TOKEN, READ_TOKEN = "write-s3cret", "read-s3cret"


@pytest.fixture
async def guarded_api(store: Store) -> AsyncIterator[str]:
    tokens = api_tokens(
        Settings(api_token=SecretStr(WRITE_TOKEN), api_read_token=SecretStr(READ_TOKEN))
    )
    async with serving(create_api_app(store, tokens)) as url:
        yield url


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
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


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {WRITE_TOKEN}", f"Bearer {READ_TOKEN}", _basic(WRITE_TOKEN), _basic(READ_TOKEN)],
    ids=["bearer-api-token", "bearer-read-token", "basic-api-token", "basic-read-token"],
)
async def test_either_token_opens_the_read_api(guarded_api: str, authorization: str) -> None:
    for path in ("/v1/messages/d7", "/v1/messages?external_send_id=order-7"):
        status, body = await _get(f"{guarded_api}{path}", {"Authorization": authorization})
        assert (status, body["dispatch_id"]) == (200, "d7")


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Bearer {READ_TOKEN}x", _basic(""), f"Basic {READ_TOKEN}"],
    ids=["none", "wrong", "longer", "basic-empty", "basic-not-base64"],
)
async def test_without_a_right_token_every_path_but_health_is_401(
    guarded_api: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    # Query tokens are not accepted here: they end up in access logs.
    for path in ("/v1/messages/d7", f"/v1/messages?external_send_id=order-7&token={READ_TOKEN}"):
        status, body = await _get(f"{guarded_api}{path}", headers)
        assert (status, body["error"]) == (401, "unauthorized"), path
        assert "c@example.com" not in json.dumps(body)
    status, body = await _get(f"{guarded_api}/no-such-path", headers)
    assert (status, body["error"]) == (401, "unauthorized")
    assert await _get(f"{guarded_api}/healthz", headers) == (200, {"status": "ok"})
    assert await _get(f"{guarded_api}/readyz", headers) == (200, {"status": "ready"})


@pytest.mark.parametrize("header", [b"Bearer \xe9", b"Basic \xe9", b"\xe9"])
async def test_a_non_ascii_authorization_header_is_401_not_500(
    guarded_api: str, header: bytes
) -> None:
    port = int(guarded_api.rsplit(":", 1)[1])
    status, body = await raw_request(
        port, "GET", "/v1/messages/d7", b"Authorization: " + header + b"\r\n"
    )
    assert (status, body["error"]) == (401, "unauthorized")


ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def test_the_api_listens_on_this_machine_only_unless_a_token_guards_it() -> None:
    token = SecretStr("t")
    with capture_logs() as logs:
        assert api_host(Settings(api_token=token)) == ALL_INTERFACES
        assert api_host(Settings(api_read_token=token)) == ALL_INTERFACES
        assert api_host(Settings(api_read_token=token, api_host="10.1.2.3")) == "10.1.2.3"
    assert logs == []
    with capture_logs() as logs:
        assert api_host(Settings()) == "127.0.0.1"
        assert api_host(Settings(api_host=ALL_INTERFACES)) == ALL_INTERFACES
    assert [log["log_level"] for log in logs] == ["warning", "warning"]
    assert "listens on 127.0.0.1 only" in logs[0]["event"]
    assert "answers anyone" in logs[1]["event"]


async def test_txmail_run_guards_its_api_with_the_tokens(
    settings: Settings, tmp_path: Path
) -> None:
    api_port = free_port()
    env = {
        **os.environ,
        "TXMAIL_AMQP_URL": settings.amqp_url,
        "TXMAIL_NAMESPACE": settings.namespace,
        "TXMAIL_DATABASE_URL": f"sqlite:///{tmp_path / 'txmail.db'}",
        "TXMAIL_HTTP_HOST": "127.0.0.1",
        "TXMAIL_HTTP_PORT": str(free_port()),
        "TXMAIL_API_HOST": "127.0.0.1",
        "TXMAIL_API_PORT": str(api_port),
        "TXMAIL_API_READ_TOKEN": READ_TOKEN,
        "TXMAIL_LOG_LEVEL": "warning",
    }
    process = await spawn(
        "run", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{api_port}"
    try:

        async def ready() -> bool:
            try:
                return (await _get(f"{base}/readyz"))[0] == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(ready, 20, "txmail run's api")
        assert (await _get(f"{base}/v1/messages/d7"))[0] == 401
        read = {"Authorization": f"Bearer {READ_TOKEN}"}
        assert (await _get(f"{base}/v1/messages/d7", read))[0] == 404
        # Its console reaches the parking queue through the executor's code.
        assert await _get(f"{base}/v1/parked/count", read) == (200, {"total": 0})
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0


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
    command: Command = args.handler
    config = Configuration(settings, rules_file=None)
    return await asyncio.to_thread(exit_code_of, lambda: command(config, args))


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


async def test_the_api_answers_brazes_health(database_url: str) -> None:
    await degraded(database_url)
    store = await open_store(database_url, learning(), read_only=True)
    try:
        async with (
            serving(create_api_app(store)) as api,
            aiohttp.ClientSession() as session,
            session.get(f"{api}/v1/health/braze") as response,
        ):
            assert response.status == 200
            report = await response.json()
    finally:
        await store.close()
    assert report["overall"]["health"] == "degraded"
    assert report["overall"]["figures"]["p95_latency_seconds"] == 120
    assert [c["campaign_api_id"] for c in report["campaigns"]] == ["c"]
    assert {c["health"] for c in report["recent_changes"]} == {"degraded"}

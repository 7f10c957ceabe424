"""The console's JSON endpoints and its guards, over HTTP against a real store and (for
parked requests) real RabbitMQ; the pages themselves are driven in test_pages.py."""

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from pydantic import SecretStr

from tests.support.factories import postback, registration, tracked
from tests.support.fallback import a_request, park
from tests.support.ports import free_port
from tests.support.processes import environment
from tests.support.waiting import wait_until
from txmail.core.events import (
    CIRCUIT_OPEN_DETAIL,
    FALLBACK_ATTEMPT_TYPE,
    AttemptOutcome,
    FallbackAttempt,
)
from txmail.core.http import serving
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.fallback.parking.operations import BrokerParkedFallbacks
from txmail.workers.api import create_api_app
from txmail.workers.console import access
from txmail.workers.console.access import ApiTokens, Role, new_session
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store, TrackedEvent
from txmail.workers.timeouts import DeliveryTimeouts

TOKENS = ApiTokens(replay=SecretStr("replay-s3cret"), read=SecretStr("read-s3cret"))
REPLAY = {"Authorization": "Bearer replay-s3cret"}
READ = {"Authorization": "Bearer read-s3cret"}


def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'txmail.db'}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(store_url(tmp_path), DeliveryTimeouts(timedelta(minutes=10)))
    now = datetime.now(UTC)
    await opened.apply(
        [
            registration(now, external_send_id="order-1", campaign_api_id="receipts"),
            postback("d1", "sent", now, external_send_id="order-1", campaign_api_id="receipts"),
            postback(
                "d1",
                "bounced",
                now,
                external_send_id="order-1",
                campaign_api_id="receipts",
                reason="550 5.1.1 no such user",
            ),
            postback("d2", "delivered", now),
        ],
        now,
    )
    yield opened
    await opened.close()


@asynccontextmanager
async def api(
    store: Store, settings: Settings, tokens: ApiTokens = TOKENS, parked: bool = True
) -> AsyncIterator[str]:
    app = create_api_app(store, tokens, parked=BrokerParkedFallbacks(settings) if parked else None)
    async with serving(app, "127.0.0.1", 0, settings) as port:
        yield f"http://127.0.0.1:{port}"


async def call(
    method: str, url: str, headers: dict[str, str] | None = None, **options: Any
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, allow_redirects=False, **options) as response,
    ):
        text = await response.text()
        is_json = response.content_type == "application/json"
        return response.status, json.loads(text) if is_json else text


async def test_the_json_endpoints_give_what_the_pages_show(
    store: Store, settings: Settings
) -> None:
    async with api(store, settings) as url:
        status, overview = await call("GET", f"{url}/v1/overview", READ)
        assert status == 200
        assert set(overview) == {
            "outcomes", "decisions", "attempts", "circuits", "deadlines", "latency"
        }  # fmt: skip
        assert overview["outcomes"]["hour"] == {"bounced": 1, "delivered": 1}
        assert overview["decisions"]["day"] == {"bounced": 1}
        assert len(overview["latency"]) == 24
        for part in overview:
            status, body = await call("GET", f"{url}/v1/stats/{part}", READ)
            assert (status, body) == (200, overview[part]), part
        status, body = await call("GET", f"{url}/v1/stats/everything", READ)
        assert (status, body["error"]) == (404, "not_found")

        status, body = await call("GET", f"{url}/v1/failures?trigger=bounced", READ)
        assert status == 200
        [failure] = body["failures"]
        assert (failure["external_send_id"], failure["reason"]) == (
            "order-1",
            "550 5.1.1 no such user",
        )
        status, body = await call("GET", f"{url}/v1/failures?campaign_api_id=other", READ)
        assert (status, body) == (200, {"failures": []})
        for query in ("trigger=late", "limit=0", "limit=501", "limit=x"):
            status, body = await call("GET", f"{url}/v1/failures?{query}", READ)
            assert (status, body["error"]) == (400, "bad_request"), query


async def test_parked_requests_are_listed_to_readers_and_replayed_only_with_the_full_token(
    store: Store, settings: Settings
) -> None:
    request = a_request()
    await park(settings, request)
    key = request.idempotency_key
    async with api(store, settings) as url:
        assert await call("GET", f"{url}/v1/parked/count", READ) == (200, {"total": 1})
        status, body = await call("GET", f"{url}/v1/parked", READ)
        assert (status, body["total"]) == (200, 1)
        assert body["requests"][0]["idempotency_key"] == key
        assert "400" in body["requests"][0]["reason"]

        replay = f"{url}/v1/parked/replay"
        status, body = await call("POST", replay, READ, json={"ids": [key]})
        assert (status, body["error"]) == (403, "forbidden")
        other_site = {**REPLAY, "Origin": "https://evil.example"}
        status, body = await call("POST", replay, other_site, json={"ids": [key]})
        assert (status, body["error"]) == (403, "forbidden")
        wrongs: list[Any] = [
            {}, {"ids": []}, {"ids": [1]}, {"all": True, "ids": [key]}, [], {"all": 1},
            {"ids": [key], "then": "all"},
        ]  # fmt: skip
        for wrong in wrongs:
            status, body = await call("POST", replay, REPLAY, json=wrong)
            assert (status, body["error"]) == (400, "bad_request"), wrong
        for raw in (b"[" * 100_000, b"\xff", b'{"ids": ["\\ud800"]}'):  # deep, not text, half
            status, body = await call("POST", replay, REPLAY, data=raw)
            assert (status, body["error"]) == (400, "bad_request"), raw

        status, body = await call("POST", replay, REPLAY, json={"ids": [key, "nope"]})
        assert status == 200
        assert [r["idempotency_key"] for r in body["replayed"]] == [key]
        assert body["not_found"] == ["nope"]
        status, body = await call("GET", f"{url}/v1/parked", READ)
        assert (status, body["total"]) == (200, 0)

    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(Topology(settings.namespace).fallback_queue)
        message = await queue.get(no_ack=True)
        assert json.loads(message.body)["idempotency_key"] == key


async def test_without_a_way_to_the_parking_queue_the_parked_list_is_503(
    store: Store, settings: Settings
) -> None:
    async with api(store, settings, parked=False) as url:
        for path in ("/v1/parked", "/v1/parked/count"):
            status, body = await call("GET", f"{url}{path}", READ)
            assert (status, body["error"]) == (503, "unavailable")
        status, page = await call("GET", f"{url}/parked", READ)
        assert status == 200
        assert "cannot see the parked fallbacks" in page


async def test_numbers_no_one_writes_are_refused_or_ignored_never_an_error(
    store: Store, settings: Settings
) -> None:
    """isdigit() takes "²", which int() refuses, and int() refuses over 4300 digits."""
    async with api(store, settings, parked=False) as url:
        for limit in ("²", "9" * 5000, "+1", " 1"):
            status, body = await call("GET", f"{url}/v1/failures", READ, params={"limit": limit})
            assert (status, body["error"]) == (400, "bad_request"), limit
        status, _ = await call("GET", f"{url}/parked", READ, params={"replayed": "²"})
        assert status == 200
        for expires in ("²", "9" * 5000):
            status, _ = await call("GET", f"{url}/failures", cookie(f"read.{expires}.00.00"))
            assert status == 303, expires


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{access.SESSION_COOKIE}={value}", "Accept": "text/html"}


async def test_a_forged_expired_or_outdated_session_opens_nothing(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = new_session(TOKENS, Role.READ)
    forged = session.replace("read.", "replay.", 1)
    changed = ApiTokens(replay=TOKENS.replay, read=SecretStr("a-new-read-token"))
    monkeypatch.setattr(access, "SESSION_LIFETIME", -1)
    expired = new_session(TOKENS, Role.READ)
    async with api(store, settings) as url:
        status, page = await call("GET", f"{url}/failures", cookie(session))
        assert (status, "order-1" in page) == (200, True)
        for value in (forged, expired, "read.9999999999.00.00", "", "replay"):
            status, _ = await call("GET", f"{url}/failures", cookie(value))
            assert status == 303, value
            status, body = await call("GET", f"{url}/v1/failures", cookie(value))
            assert (status, body["error"]) == (401, "unauthorized"), value
    async with api(store, settings, tokens=changed) as url:
        status, _ = await call("GET", f"{url}/failures", cookie(session))
        assert status == 303


async def test_forms_that_change_something_need_the_csrf_token_and_this_site(
    store: Store, settings: Settings
) -> None:
    session = cookie(new_session(TOKENS, Role.REPLAY))
    async with api(store, settings) as url:
        status, page = await call("POST", f"{url}/parked/replay", session, data={"all": "1"})
        assert (status, "out of date" in page) == (403, True)
        status, page = await call("POST", f"{url}/sign-out", session, data={"csrf": "guessed"})
        assert status == 403
        status, page = await call(
            "POST",
            f"{url}/sign-in",
            {"Origin": "https://evil.example"},
            data={"token": "replay-s3cret"},
        )
        assert (status, "another site" in page) == (403, True)
        for wanted, landing in [
            ("/failures?trigger=bounced", "/failures?trigger=bounced"),
            ("//evil.example/x", "/"),
            ("/\\evil.example", "/"),
            ("https://evil.example", "/"),
            ("//[", "/"),
        ]:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{url}/sign-in",
                    data={"token": "replay-s3cret", "next": wanted},
                    allow_redirects=False,
                ) as response,
            ):
                assert response.status == 303
                assert response.headers["Location"] == landing, wanted
    async with api(store, settings, tokens=ApiTokens()) as url:
        # No token set: open to anyone who reaches it, yet not to other sites' forms.
        status, page = await call("POST", f"{url}/parked/replay", data={"all": "1"})
        assert status == 403
        status, page = await call("GET", f"{url}/parked")
        assert (status, "No token is set" in page) == (200, True)


async def test_a_body_that_is_not_the_pages_form_is_a_400_page_not_an_error(
    store: Store, settings: Settings
) -> None:
    """Multipart without its boundary, or bytes that are not UTF-8, made aiohttp's form
    reader fail: a 500. The pages post urlencoded UTF-8, and only that is read."""
    form = "application/x-www-form-urlencoded"
    not_forms = [
        ("multipart/form-data", b"all=1"),
        (f"{form}; charset=utf-8", b"all=1&csrf=\xff"),
        ("application/json", b'{"all": "1"}'),
    ]
    async with api(store, settings, parked=False) as url:
        for path in ("/parked/replay", "/sign-in", "/sign-out"):
            for content_type, body in not_forms:
                headers = {**REPLAY, "Content-Type": content_type}
                status, page = await call("POST", f"{url}{path}", headers, data=body)
                assert (status, "not a form" in page) == (400, True), (path, content_type)
        status, page = await call("GET", f"{url}/sign-in", params={"next": "//["})
        assert (status, 'name="next" value="/"' in page) == (200, True)


async def test_txmail_api_serves_the_console_with_the_parked_fallbacks_wired_in(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **environment(settings.model_copy(update={"database_url": store_url(tmp_path)})),
        "TXMAIL_API_HOST": "127.0.0.1",
        "TXMAIL_API_PORT": str(port),
        "TXMAIL_API_TOKEN": "replay-s3cret",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "txmail.cli", "api", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            try:
                return (await call("GET", f"{url}/readyz"))[0] == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(ready, 20, "txmail api")
        status, page = await call("GET", f"{url}/sign-in")
        assert (status, "API token" in page) == (200, True)
        assert (await call("GET", url, {"Accept": "text/html"}))[0] == 303
        assert await call("GET", f"{url}/v1/parked/count", REPLAY) == (200, {"total": 0})
        status, page = await call("GET", f"{url}/failures", REPLAY)
        assert (status, "order-1" in page) == (200, True)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_a_handler_whose_latest_attempt_met_its_open_circuit_is_shown_open(
    store: Store, settings: Settings
) -> None:
    now = datetime.now(UTC)

    def attempt(handler: str, at: datetime, detail: str) -> TrackedEvent:
        event = FallbackAttempt(
            idempotency_key=f"txm_{handler}_{at.timestamp()}",
            dispatch_id="d1",
            external_send_id="order-1",
            handler=handler,
            attempt=1,
            outcome=AttemptOutcome.RETRYING,
            detail=detail,
            at=at,
        )
        return tracked(FALLBACK_ATTEMPT_TYPE, event.model_dump(mode="json"), at)

    await store.apply(
        [
            attempt("sms", now, f"rules[0]: transient: {CIRCUIT_OPEN_DETAIL}"),
            attempt(
                "hook", now - timedelta(seconds=1), f"rules[0]: transient: {CIRCUIT_OPEN_DETAIL}"
            ),
            attempt("hook", now, "rules[0]: transient: answered 503"),  # the probe
        ],
        now,
    )
    async with api(store, settings) as url:
        status, circuits = await call("GET", f"{url}/v1/stats/circuits", READ)
    assert status == 200
    assert [c["handler"] for c in circuits] == ["sms"]

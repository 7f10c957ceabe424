"""What every txmail HTTP server does at the connection level, tried with raw sockets:
slow and idle clients are cut off, connections are capped, malformed requests get JSON."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from tests.support.broker_url import host_and_port, via_port
from tests.support.ingress_server import ProductionServer, running_ingress
from tests.support.ports import free_port
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.health import create_health_app
from txmail.core.http import serve_until_stopped
from txmail.core.http import serving as serving_app
from txmail.core.settings import Settings
from txmail.ingress.app import create_app
from txmail.ingress.context import BROKER
from txmail.workers.api import create_api_app
from txmail.workers.store import open_store
from txmail.workers.timeouts import DeliveryTimeouts

TIMEOUT = timedelta(milliseconds=300)


def limited(settings: Settings, **limits: Any) -> Settings:
    """Header and body timeouts short enough to pass in a test; an idle connection is
    kept (unless a test says otherwise), so no test client's connection is cut under it."""
    return settings.model_copy(
        update={
            "http_header_timeout": TIMEOUT,
            "http_body_timeout": TIMEOUT,
            "http_keepalive_timeout": timedelta(seconds=30),
            **limits,
        }
    )


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[int]:
    """The ingress served as in production, with no test client holding a connection
    to it (which its limits could cut or count); yields its port."""
    app = create_app(settings)
    server = ProductionServer(app, settings)
    await server.start_server()
    try:
        await wait_until(lambda: app[BROKER].is_ready, what="the broker connection")
        assert server.port is not None
        yield server.port
    finally:
        await server.close()


async def connect(port: int | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert port is not None
    return await asyncio.open_connection("127.0.0.1", port)


async def answer_then_close(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    """The one response the server sends, read until it closes the connection (within 5 s)."""
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


async def closed_without_answer(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), timeout=5) == b""


async def test_partial_headers_are_answered_408_and_closed(settings: Settings) -> None:
    async with serving(limited(settings)) as port:
        reader, writer = await connect(port)
        writer.write(b"POST /postbacks HTTP/1.1\r\nHost: x\r\n")
        status, headers, body = await answer_then_close(reader)
    assert status == 408
    assert body["error"] == "request_timeout"
    assert headers["server"] == "txmail"


async def test_a_connection_that_sends_nothing_is_closed(settings: Settings) -> None:
    async with serving(limited(settings)) as port:
        reader, _ = await connect(port)
        status, _, _ = await answer_then_close(reader)
    assert status == 408


async def test_a_slow_answer_is_not_cut_by_the_next_requests_header_timeout(
    settings: Settings, amqp_url: str
) -> None:
    proxy = TcpProxy(*host_and_port(amqp_url))
    await proxy.start()
    slow_broker = limited(settings, amqp_url=via_port(amqp_url, proxy.port))
    body = json.dumps({"dispatch_id": "d", "status": "sent"}).encode()
    try:
        async with running_ingress(slow_broker) as client:
            reader, writer = await connect(client.port)
            proxy.pause()  # the postback waits for its confirm longer than the header timeout
            writer.write(
                b"POST /postbacks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await wait_until(lambda: proxy.held > 0, what="the publish to reach the proxy")
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # the next request, pipelined, begun
            await asyncio.sleep(3 * TIMEOUT.total_seconds())  # past the header timeout
            proxy.resume()
            assert (
                await asyncio.wait_for(reader.readline(), timeout=5) == b"HTTP/1.1 202 Accepted\r\n"
            )
    finally:
        await proxy.close()


async def test_a_trickled_body_is_answered_408_and_closed(settings: Settings) -> None:
    async with serving(limited(settings)) as port:
        reader, writer = await connect(port)
        writer.write(
            b"POST /postbacks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        status, _, body = await answer_then_close(reader)
    assert status == 408
    assert body == {
        "error": "request_timeout",
        "message": "the request body took longer than 0.3s",
    }


async def test_an_idle_keep_alive_connection_is_closed(settings: Settings) -> None:
    async with serving(limited(settings, http_keepalive_timeout=TIMEOUT)) as port:
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(len(json.dumps({"status": "ok"})))
        assert await closed_without_answer(reader)


async def test_connections_past_the_cap_are_answered_503(settings: Settings) -> None:
    async with serving(settings.model_copy(update={"http_max_connections": 2})) as port:
        _, first = await connect(port)
        _, second = await connect(port)
        with structlog.testing.capture_logs() as logs:
            refused = [await connect(port) for _ in range(3)]
            answers = [await answer_then_close(reader) for reader, _ in refused]
        for writer in (first, second, *(writer for _, writer in refused)):
            writer.close()
    for status, headers, body in answers:
        assert status == 503
        assert body["error"] == "too_many_connections"
        assert headers["retry-after"] == "1"
    # Said once, not once per connection.
    assert [e["log_level"] for e in logs] == ["warning"]


async def test_a_request_the_parser_refuses_is_json_and_logged_without_its_bytes(
    settings: Settings,
) -> None:
    async with serving(settings) as port:
        reader, writer = await connect(port)
        with structlog.testing.capture_logs() as logs:
            writer.write(b"POST /postbacks?token=s3cret HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n")
            status, headers, body = await answer_then_close(reader)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers["server"] == "txmail"
    assert body["error"] == "bad_request"
    assert [entry["log_level"] for entry in logs] == ["info"]
    assert "s3cret" not in repr(logs)


async def test_a_client_hanging_up_mid_body_is_not_an_error(settings: Settings) -> None:
    async with running_ingress(settings) as client:
        _, writer = await connect(client.port)
        with structlog.testing.capture_logs() as logs:
            writer.write(
                b"POST /postbacks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            writer.transport.abort()

            async def logged() -> bool:
                return bool(logs)

            await wait_until(logged, what="the hang-up to be logged")
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("client closed the connection mid-request", "info")
    ]


async def test_every_answer_names_txmail_not_aiohttp(settings: Settings) -> None:
    async with running_ingress(settings) as client:
        for method, path in (("GET", "/healthz"), ("GET", "/nowhere"), ("POST", "/postbacks")):
            response = await client.request(method, path)
            assert response.headers["Server"] == "txmail", (method, path)


async def test_the_api_is_served_the_same_way(settings: Settings, tmp_path: Path) -> None:
    """`txmail api` goes through serve_until_stopped, as `txmail ingress` does."""
    store = await open_store(
        f"sqlite:///{tmp_path / 'txmail.db'}", DeliveryTimeouts(timedelta(minutes=10))
    )
    port = free_port()
    stop = asyncio.Event()
    serving = asyncio.create_task(
        serve_until_stopped(create_api_app(store), "127.0.0.1", port, limited(settings), stop)
    )
    try:

        async def listening() -> bool:
            try:
                _, writer = await connect(port)
            except OSError:
                return False
            writer.close()
            return True

        await wait_until(listening, what="the API to listen")
        reader, writer = await connect(port)
        writer.write(b"GET /v1/messages/d?token=s3cret HTTP/1.1\r\nBad header\r\n\r\n")
        status, headers, body = await answer_then_close(reader)
        assert (status, body["error"], headers["server"]) == (400, "bad_request", "txmail")
        reader, writer = await connect(port)
        writer.write(b"GET /v1/messages/d HTTP/1.1\r\n")
        status, _, body = await answer_then_close(reader)
        assert (status, body["error"]) == (408, "request_timeout")
    finally:
        stop.set()
        await serving
        await store.close()


async def test_the_worker_and_executor_health_port_is_served_the_same_way(
    settings: Settings,
) -> None:
    """`txmail worker` and `txmail fallback` serve their health app through serving()."""

    async def ready() -> list[str]:
        return []

    async with serving_app(create_health_app(ready, []), "127.0.0.1", 0, settings) as port:
        reader, writer = await connect(port)
        writer.write(b"GET /readyz?token=s3cret HTTP/1.1\r\nBad header\r\n\r\n")
        status, headers, body = await answer_then_close(reader)
        assert (status, body["error"], headers["server"]) == (400, "bad_request", "txmail")
        reader, writer = await connect(port)
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, body = await answer_then_close(reader)
        assert (status, body["error"]) == (404, "not_found")

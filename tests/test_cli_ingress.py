"""``txmail`` as an operator runs it: a real process, real signals."""

import asyncio
import json
import os
import signal
import subprocess

from tests.support.amqp import drain
from tests.support.broker_url import host_and_port, via_port
from tests.support.ports import free_port
from tests.support.processes import TXMAIL, spawn, wait_for_line
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.settings import Settings
from txmail.core.topology import Topology


def txmail(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TXMAIL, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=30,
        check=False,
    )


def test_help_lists_the_subcommands() -> None:
    result = txmail("--help")
    assert result.returncode == 0
    assert "ingress" in result.stdout


def test_an_unknown_subcommand_is_a_usage_error() -> None:
    result = txmail("nonsense")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_bad_settings_are_a_message_not_a_traceback() -> None:
    result = txmail("ingress", env={"TXMAIL_HTTP_PORT": "eighty"})
    assert result.returncode == 2
    assert "TXMAIL_HTTP_PORT" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_finishes_the_request_in_flight_then_exits(
    settings: Settings, amqp_url: str
) -> None:
    proxy = TcpProxy(*host_and_port(amqp_url))
    await proxy.start()
    port = free_port()
    env = {
        **os.environ,
        "TXMAIL_AMQP_URL": via_port(amqp_url, proxy.port),
        "TXMAIL_NAMESPACE": settings.namespace,
        "TXMAIL_HTTP_HOST": "127.0.0.1",
        "TXMAIL_HTTP_PORT": str(port),
        "TXMAIL_PUBLISH_TIMEOUT": "20s",
    }
    process = await spawn("ingress", env=env, stderr=asyncio.subprocess.STDOUT)
    try:

        async def ready() -> bool:
            return await http_status(port, "GET", "/readyz", b"") == 200

        await wait_until(ready, 20, "readiness")
        # The broker stops answering: the postback waits for its confirm, in flight.
        proxy.pause()
        body = json.dumps({"dispatch_id": "in-flight", "status": "sent"}).encode()
        in_flight = asyncio.create_task(http_status(port, "POST", "/postbacks", body))
        await wait_until(lambda: proxy.held > 0, what="the publish to reach the proxy")
        process.send_signal(signal.SIGTERM)
        await wait_for_line(process, b"stopping", timeout=10)
        assert not in_flight.done()
        proxy.resume()
        assert await asyncio.wait_for(in_flight, timeout=10) == 202
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await proxy.close()
    [message] = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 1)
    assert json.loads(message.body)["dispatch_id"] == "in-flight"


async def http_status(port: int, method: str, path: str, body: bytes) -> int | bool:
    """The status code of one plain HTTP/1.1 request, or False when nothing listens."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1]) if status_line else False

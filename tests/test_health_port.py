"""``txmail worker``, ``txmail fallback`` and ``txmail run`` as processes: readiness says
whether they consume, through a broker outage and back; a port in use ends them at once."""

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.ports import free_port
from tests.support.processes import environment, spawn
from tests.support.readiness import proxied
from tests.support.rules_file import webhook_to
from tests.support.waiting import wait_until
from txmail.core.settings import Settings
from txmail.core.topology import Topology

# Bounces to a webhook nothing listens on: the processes start, nothing is called.
RULES = webhook_to("http://127.0.0.1:9", on=("bounced",))


@asynccontextmanager
async def txmail_process(command: str, env: dict[str, str]) -> AsyncIterator[None]:
    """``txmail COMMAND`` for the block; it must stop by itself on SIGTERM."""
    process = await spawn(
        command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.wait_for(process.wait(), 15) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _get(port: int, path: str) -> tuple[int, Any]:
    """Status and JSON body, or (0, None) while nothing listens."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.json()
    except aiohttp.ClientConnectionError:
        return 0, None


async def _readiness_follows_the_broker(port: int, proxy: Any, *not_consuming: str) -> None:
    async def status(expected: int) -> bool:
        return (await _get(port, "/readyz"))[0] == expected

    await wait_until(lambda: status(200), timeout=20, what="ready")
    assert await _get(port, "/healthz") == (200, {"status": "ok"})
    await proxy.cut()

    async def says_not_consuming() -> bool:
        code, body = await _get(port, "/readyz")
        return code == 503 and all(f"not consuming {q}" in body["problems"] for q in not_consuming)

    await wait_until(says_not_consuming, what="not ready, saying what it does not consume")
    assert (await _get(port, "/readyz"))[1]["error"] == "not_ready"
    assert (await _get(port, "/healthz"))[0] == 200  # alive all the same
    await proxy.start()
    await wait_until(lambda: status(200), timeout=20, what="ready again")


def _env(settings: Settings, tmp_path: Path, **more: str) -> dict[str, str]:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    return {
        **environment(settings, rules),
        "TXMAIL_DATABASE_URL": f"sqlite:///{tmp_path / 'txmail.db'}",
        "TXMAIL_HTTP_HOST": "127.0.0.1",
        **more,
    }


@pytest.mark.parametrize("command", ["worker", "fallback"])
async def test_the_health_port_says_whether_the_process_consumes(
    settings: Settings, tmp_path: Path, command: str
) -> None:
    topology = Topology(settings.namespace)
    queue = topology.tracker_queue if command == "worker" else topology.fallback_queue
    port = free_port()
    async with (
        proxied(settings) as (proxy, cut_off),
        txmail_process(command, _env(cut_off, tmp_path, TXMAIL_METRICS_PORT=str(port))),
    ):
        await _readiness_follows_the_broker(port, proxy, queue)


async def test_the_api_of_txmail_run_says_whether_tracker_and_executor_consume(
    settings: Settings, tmp_path: Path
) -> None:
    topology = Topology(settings.namespace)
    api_port = free_port()
    env = _env(settings, tmp_path, TXMAIL_HTTP_PORT=str(free_port()), TXMAIL_API_PORT=str(api_port))
    async with proxied(settings) as (proxy, cut_off):
        env["TXMAIL_AMQP_URL"] = cut_off.amqp_url
        async with txmail_process("run", env):
            await _readiness_follows_the_broker(
                api_port, proxy, topology.tracker_queue, topology.fallback_queue
            )


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        ("ingress", "TXMAIL_HTTP_PORT"),
        ("api", "TXMAIL_API_PORT"),
        ("run", "TXMAIL_HTTP_PORT"),
        ("run", "TXMAIL_API_PORT"),
        ("worker", "TXMAIL_METRICS_PORT"),
        ("fallback", "TXMAIL_METRICS_PORT"),
    ],
)
async def test_a_port_in_use_ends_the_process_at_once_saying_so(
    settings: Settings, tmp_path: Path, command: str, variable: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {
            "TXMAIL_HTTP_PORT": str(free_port()),
            "TXMAIL_API_PORT": str(free_port()),
            "TXMAIL_METRICS_PORT": str(free_port()),
            variable: str(port),
        }
        process = await spawn(command, env=_env(settings, tmp_path, **ports))
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 1
    assert f"txmail: port {port} is already in use" in stderr.decode()
    assert "Traceback" not in stderr.decode()

"""``txmail run``: every part in one process, as on a laptop — a bounce posted to the
ingress ends as a signed webhook at the receiver and an attempt on the API's timeline."""

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp

from tests.support.fallback import RETRY_SCHEDULE
from tests.support.ports import free_port
from tests.support.processes import environment, spawn, wait_for_line
from tests.support.rules_file import webhook_to
from tests.support.servers import Receiver
from tests.support.waiting import wait_until
from txmail.core.durations import format_duration
from txmail.core.settings import Settings


async def test_a_bounce_posted_to_the_ingress_reaches_the_webhook_and_the_timeline(
    settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(webhook_to(receiver.url, on=("bounced",)))
    ingress_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "TXMAIL_AMQP_URL": settings.amqp_url,
        "TXMAIL_NAMESPACE": settings.namespace,
        "TXMAIL_DATABASE_URL": f"sqlite:///{tmp_path / 'txmail.db'}",
        "TXMAIL_RULES": str(rules),
        "TXMAIL_FALLBACK_RETRY_SCHEDULE": ",".join(map(format_duration, RETRY_SCHEDULE)),
        "TXMAIL_HTTP_HOST": "127.0.0.1",
        "TXMAIL_HTTP_PORT": str(ingress_port),
        "TXMAIL_API_PORT": str(api_port),
        "TXMAIL_LOG_LEVEL": "warning",
    }
    process = await spawn(
        "run", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    postback = {"dispatch_id": "laptop-1", "status": "bounced", "metadata": {"reason": "550"}}
    try:
        async with aiohttp.ClientSession() as session:

            async def accepted() -> bool:
                try:
                    async with session.post(
                        f"http://127.0.0.1:{ingress_port}/postbacks", data=json.dumps(postback)
                    ) as response:
                        return response.status == 202
                except aiohttp.ClientConnectionError:
                    return False

            async def attempt_on_timeline() -> bool:
                url = f"http://127.0.0.1:{api_port}/v1/messages/laptop-1"
                async with session.get(url) as response:
                    if response.status != 200:
                        return False
                    message = await response.json()
                kinds = [entry["kind"] for entry in message["timeline"]]
                return message["outcome"] == "bounced" and "fallback_attempt" in kinds

            await wait_until(accepted, timeout=20, what="the ingress to accept the postback")
            await wait_until(attempt_on_timeline, timeout=20, what="the attempt on the timeline")
        [call] = receiver.webhook.calls
        assert call.body["data"]["dispatch_id"] == "laptop-1"
        assert call.body["data"]["trigger"] == "bounced"
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_every_process_running_the_executor_refuses_an_invalid_rules_file(
    tmp_path: Path,
) -> None:
    """(The others read no handler: tests/fallback/test_rules_file.py.)"""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\non = ["bounced"]\nhandlers = ["nowhere"]\n')
    for command in ("fallback", "run"):
        process = await spawn(command, env={**os.environ, "TXMAIL_RULES": str(rules)})
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 2, command
        assert "rules[0].handlers[0]" in stderr.decode(), command
        assert "Traceback" not in stderr.decode()


async def test_sigterm_stops_txmail_run_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(webhook_to("http://127.0.0.1:9", on=("bounced",)))
    env = {
        **os.environ,
        "TXMAIL_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "TXMAIL_DATABASE_URL": f"sqlite:///{tmp_path / 'txmail.db'}",
        "TXMAIL_RULES": str(rules),
        "TXMAIL_HTTP_HOST": "127.0.0.1",
        "TXMAIL_HTTP_PORT": str(free_port()),
        "TXMAIL_API_PORT": str(free_port()),
    }
    process = await spawn("run", env=env, stderr=asyncio.subprocess.STDOUT)
    try:
        await wait_for_line(process, b"broker not reachable")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=5) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_txmail_run_gives_requests_in_flight_the_shutdown_timeout_and_no_more(
    settings: Settings, tmp_path: Path
) -> None:
    """`txmail run` serves through txmail.core.http as `txmail ingress` does: on SIGTERM
    a request still in flight gets TXMAIL_SHUTDOWN_TIMEOUT, not aiohttp's 60 s (nor the
    body timeout, a minute here)."""
    port = free_port()
    env = environment(settings) | {
        "TXMAIL_DATABASE_URL": f"sqlite:///{tmp_path / 'txmail.db'}",
        "TXMAIL_HTTP_HOST": "127.0.0.1",
        "TXMAIL_HTTP_PORT": str(port),
        "TXMAIL_API_PORT": str(free_port()),
        "TXMAIL_SHUTDOWN_TIMEOUT": "1s",
        "TXMAIL_HTTP_BODY_TIMEOUT": "1m",
        "TXMAIL_LOG_LEVEL": "info",  # for the line saying every part runs
    }
    env.pop("TXMAIL_RULES", None)
    process = await spawn("run", env=env, stderr=asyncio.subprocess.STDOUT)
    try:
        await wait_for_line(process, b'"running"', timeout=30)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /postbacks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        process.send_signal(signal.SIGTERM)
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        assert asyncio.get_running_loop().time() - started < 15
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # cut, not answered
        writer.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

"""``txmail run``: ingress, worker and api in one process, on SQLite, as on a laptop."""

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.waiting import wait_until
from txmail.settings import Settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_postback_posted_to_the_ingress_shows_in_the_api(
    settings: Settings, tmp_path: Path
) -> None:
    ingress_port, api_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "TXMAIL_AMQP_URL": settings.amqp_url,
        "TXMAIL_NAMESPACE": settings.namespace,
        "TXMAIL_DATABASE_URL": f"sqlite:///{tmp_path / 'txmail.db'}",
        "TXMAIL_HTTP_HOST": "127.0.0.1",
        "TXMAIL_HTTP_PORT": str(ingress_port),
        "TXMAIL_API_PORT": str(api_port),
        "TXMAIL_LOG_LEVEL": "warning",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "txmail.cli",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
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

            async def tracked() -> bool:
                async with session.get(
                    f"http://127.0.0.1:{api_port}/v1/messages/laptop-1"
                ) as response:
                    return (
                        response.status == 200 and (await response.json())["outcome"] == "bounced"
                    )

            await wait_until(accepted, timeout=20, what="the ingress to accept the postback")
            await wait_until(tracked, timeout=10, what="the api to show the bounce")
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0

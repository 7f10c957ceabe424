"""A broker that is down: retried with growing waits, one log line per attempt, and
SIGTERM still ends the process in the middle of a wait."""

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.processes import spawn


async def test_an_unreachable_broker_is_retried_with_growing_waits(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TXMAIL_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "TXMAIL_DATABASE_URL": f"sqlite:///{tmp_path / 'txmail.db'}",
        "TXMAIL_HTTP_HOST": "127.0.0.1",
        "TXMAIL_METRICS_PORT": "0",
        "TXMAIL_LOG_LEVEL": "info",
    }
    process = await spawn("worker", env=env, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    lines: list[dict[str, Any]] = []
    try:
        retries: list[dict[str, Any]] = []
        while len(retries) < 3:
            line = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
            lines.append(line)
            if line["event"] == "broker not reachable, retrying":
                retries.append(line)
        # In the middle of the third wait (2 s or more): SIGTERM ends it at once.
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 5) == 0
        assert time.monotonic() - stopping < 1.5
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert [r["attempt"] for r in retries] == [1, 2, 3]
    waits = [float(r["retry_in"].removesuffix("s")) for r in retries]
    assert 0.5 <= waits[0] <= 1.5
    assert 2.0 <= waits[2] <= 3.0
    # Said in words, not as an exception's repr.
    assert {r["error"] for r in retries} == {"Connection refused"}
    # Nothing else is said about each attempt (aiormq logged each failure at error).
    assert [line for line in lines if line["level"] == "error"] == []

"""``txmail`` commands as real processes, configured like an operator would."""

import asyncio
import os
import signal
import subprocess
import sys
from asyncio.subprocess import PIPE
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from txmail.core.durations import format_duration
from txmail.core.settings import Settings

# ``txmail`` as ops run it (the installed script is this module's entry point).
TXMAIL = (sys.executable, "-m", "txmail.cli")


def environment(settings: Settings, rules: Path | None = None) -> dict[str, str]:
    """What a txmail process needs to run as ``settings`` say (and ``rules``, if given)."""
    env = {
        **os.environ,
        "TXMAIL_AMQP_URL": settings.amqp_url,
        "TXMAIL_NAMESPACE": settings.namespace,
        "TXMAIL_DATABASE_URL": settings.database_url,
        "TXMAIL_DELIVERY_TIMEOUT": format_duration(settings.delivery_timeout),
        "TXMAIL_SWEEP_INTERVAL": format_duration(settings.sweep_interval),
        "TXMAIL_WATERMARK_SKEW": format_duration(settings.watermark_skew),
        "TXMAIL_MAX_LATENESS": format_duration(settings.max_lateness),
        "TXMAIL_BATCH_SIZE": str(settings.batch_size),
        "TXMAIL_REPUBLISH_AFTER": format_duration(settings.republish_after),
        "TXMAIL_FALLBACK_RETRY_SCHEDULE": ",".join(
            map(format_duration, settings.fallback_retry_schedule)
        ),
        "TXMAIL_LOG_LEVEL": "warning",
        "TXMAIL_METRICS_PORT": "0",  # tests run many processes on one machine
    }
    if rules is not None:
        env["TXMAIL_RULES"] = str(rules)
    return env


async def spawn(
    *args: str, env: dict[str, str], stdout: int | IO[bytes] = PIPE, stderr: int | IO[bytes] = PIPE
) -> asyncio.subprocess.Process:
    """``txmail ARGS`` as a real process; output piped unless told otherwise."""
    return await asyncio.create_subprocess_exec(
        *TXMAIL, *args, env=env, stdout=stdout, stderr=stderr
    )


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*TXMAIL, "worker"], env=environment(settings), stdout=out, stderr=subprocess.STDOUT
        )


@contextmanager
def worker_process(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process for the block; stopped with SIGTERM (and must stop by itself)."""
    process = start_worker(settings, log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            wait_stopped(process, "worker", timeout=10, log=log)


def wait_stopped(
    process: "subprocess.Popen[bytes]", name: str, timeout: float, log: Path | None = None
) -> None:
    """Wait for a process sent SIGTERM to end by itself; kill it and fail if it does not."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        shown = f"; log: {log.read_text()}" if log is not None else ""
        raise AssertionError(f"{name} ignored SIGTERM{shown}") from None


async def wait_for_line(
    process: asyncio.subprocess.Process, marker: bytes, timeout: float = 15.0
) -> None:
    """Read the process's output until a line holds ``marker``; fail if it ends first or
    a line takes longer than ``timeout`` seconds."""
    assert process.stdout is not None
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
        if not line:
            raise AssertionError(f"the process ended without printing {marker!r}")
        if marker in line:
            return

"""A burst as Braze would post it, and txmail's processes to take it: for the burst
test and ``bench/burst.py``.

Every message has a fate, and its postbacks carry Braze's own times of when each thing
happened, on a schedule that runs faster than txmail can take it: the postbacks not yet
accepted wait in front of the ingress, as they would at Braze, and their times fall
further and further behind the wall clock. Some postbacks are posted twice, and each
message's postbacks may be posted in any order within a second or so.
"""

import asyncio
import json
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.ports import free_port
from tests.support.processes import TXMAIL, wait_stopped
from tests.support.rules_file import webhook_to
from tests.support.servers import verify_standard_webhook
from tests.support.waiting import wait_until


class Fate(StrEnum):
    DELIVERED = "delivered"  # delivered well within the timeout: never a fallback
    BOUNCED = "bounced"  # one bounce fallback
    ABORTED = "aborted"  # one abort fallback
    LATE = "late"  # sent, never delivered: one timeout fallback
    DELIVERED_LATE = "delivered_late"  # delivered after the timeout on Braze's clock


FALLBACK_DUE = frozenset({Fate.BOUNCED, Fate.ABORTED, Fate.LATE, Fate.DELIVERED_LATE})


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the start of the burst: when Braze emitted it
    body: dict[str, Any]


@dataclass
class Burst:
    postbacks: list[Planned]
    fates: dict[str, Fate]  # by external_send_id

    def with_fallback(self) -> set[str]:
        return {key for key, fate in self.fates.items() if fate in FALLBACK_DUE}


def _postback(key: str, status: str, start: datetime, at: float, **metadata: Any) -> Planned:
    stamp = (start + timedelta(seconds=at)).isoformat()
    return Planned(
        at,
        {
            "dispatch_id": f"d-{key}",
            "status": status,
            "metadata": {"external_send_id": key, f"{status}_at": stamp, **metadata},
        },
    )


def plan_burst(
    messages: int, per_second: float, timeout: float, start: datetime, seed: int = 7
) -> Burst:
    """``messages`` sends, ``per_second`` of them starting each second of Braze's time.

    ``timeout`` is the delivery timeout txmail is configured with: DELIVERED messages
    are delivered within a fifth of it, DELIVERED_LATE ones half as late again.
    """
    rng = random.Random(seed)  # noqa: S311 -- load, not security
    fates = list(Fate)
    weights = [70, 10, 5, 10, 5]
    planned: list[Planned] = []
    by_key: dict[str, Fate] = {}
    for i in range(messages):
        key = f"burst-{i:06d}"
        fate = rng.choices(fates, weights)[0]
        by_key[key] = fate
        sent = i / per_second
        if fate is Fate.ABORTED:
            chain = [_postback(key, "aborted", start, sent, reason="User not emailable")]
        else:
            chain = [
                _postback(key, "sent", start, sent),
                _postback(key, "processed", start, sent + rng.uniform(0.01, 0.1)),
            ]
            if fate is Fate.DELIVERED:
                at = sent + rng.uniform(0.1, timeout / 5)
                chain.append(_postback(key, "delivered", start, at))
            elif fate is Fate.BOUNCED:
                at = sent + rng.uniform(0.1, timeout / 5)
                chain.append(_postback(key, "bounced", start, at, reason="550 5.1.1 user unknown"))
            elif fate is Fate.DELIVERED_LATE:
                chain.append(_postback(key, "delivered", start, sent + timeout * 1.5))
        if rng.random() < 0.1:
            chain.append(rng.choice(chain))  # posted twice
        planned += chain
    # Posted in Braze's time order, give or take a second: neighbours swap places.
    planned.sort(key=lambda p: p.at + rng.uniform(0, 1.0))
    return Burst(planned, by_key)


@dataclass
class Offered:
    accepted: int = 0
    refused: int = 0  # 503s, posted again after the Retry-After
    latest_lag: float = 0.0  # how far behind Braze's schedule the last acceptance was
    worst_lag: float = 0.0
    accepted_at: dict[str, float] = field(default_factory=dict)  # bounce key -> monotonic


async def offer(
    urls: Sequence[str],
    postbacks: Sequence[Planned],
    concurrency: int,
    started: float,
    token: str | None = None,
) -> Offered:
    """Post every postback, one per request, each as soon as Braze's schedule (which
    began at ``started``, on the monotonic clock) has it and a connection is free; a
    503 is posted again after its Retry-After."""
    offered = Offered()
    queue: asyncio.Queue[Planned] = asyncio.Queue()
    for p in postbacks:
        queue.put_nowait(p)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        url = f"{urls[n % len(urls)]}/postbacks"
        while not queue.empty():
            p = queue.get_nowait()
            wait = p.at - (time.monotonic() - started)
            if wait > 0:
                await asyncio.sleep(wait)  # not yet emitted by "Braze"
            while True:
                async with session.post(url, data=json.dumps(p.body), headers=headers) as r:
                    if r.status == 202:
                        break
                    if r.status != 503:
                        raise AssertionError(f"{url} answered {r.status}: {await r.text()}")
                    offered.refused += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
            offered.accepted += 1
            lag = time.monotonic() - started - p.at
            offered.latest_lag = lag
            offered.worst_lag = max(offered.worst_lag, lag)
            if p.body["status"] in ("bounced", "aborted"):
                key = p.body["metadata"]["external_send_id"]
                offered.accepted_at.setdefault(key, time.monotonic())

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(n, session) for n in range(concurrency)))
    return offered


class PausableReceiver:
    """A webhook receiver that counts what it took, per external_send_id and trigger."""

    def __init__(self) -> None:
        self.taken: Counter[tuple[str, str]] = Counter()
        self.first_taken_at: dict[str, float] = {}
        self.open = asyncio.Event()
        self.open.set()
        self.held: dict[int, web.Request] = {}  # by id: a request is not hashable
        self.app = web.Application()
        self.app.router.add_post("/hook", self._hook)

    @property
    def waiting(self) -> int:
        return len(self.held)

    def callers_gone(self) -> bool:
        """Every held call's caller has hung up (its connection is closed here)."""
        return all(r.transport is None or r.transport.is_closing() for r in self.held.values())

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        verify_standard_webhook(request.headers, body)
        self.held[id(request)] = request
        try:
            await self.open.wait()
        finally:
            del self.held[id(request)]
        if request.transport is None or request.transport.is_closing():
            return web.Response(status=499)  # the caller is gone: nothing was taken
        data = (await request.json())["data"]
        key = data["external_send_id"]
        self.taken[(key, data["trigger"])] += 1
        self.first_taken_at.setdefault(key, time.monotonic())
        return web.json_response({"ok": True})


@asynccontextmanager
async def serving(receiver: PausableReceiver) -> AsyncIterator[str]:
    runner = web.AppRunner(receiver.app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Pipeline:
    """txmail's processes, as an operator runs them, each logging to its own file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self._env = env
        self._logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: str, **env: str) -> None:
        with (self._logs / f"{name}.log").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                [*TXMAIL, command],
                env={**self._env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            wait_stopped(process, name, timeout=15)


@contextmanager
def pipeline(env: dict[str, str], logs: Path) -> Iterator[Pipeline]:
    running = Pipeline(env, logs)
    try:
        yield running
    finally:
        running.stop_all()


async def all_ready(urls: list[str]) -> bool:
    async with aiohttp.ClientSession() as session:
        for url in urls:
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status != 200:
                        return False
            except aiohttp.ClientConnectionError:
                return False
    return True


async def start_deployment(running: Pipeline, ingresses: int = 2, workers: int = 3) -> list[str]:
    """Ingresses on free ports, workers and one executor, as an operator deploys them;
    returns the ingresses' URLs once they are ready."""
    ports = [free_port() for _ in range(ingresses)]
    for n, port in enumerate(ports):
        running.start(f"ingress-{n}", "ingress", TXMAIL_HTTP_PORT=str(port))
    for n in range(workers):
        running.start(f"worker-{n}", "worker")
    running.start("executor", "fallback")
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    await wait_until(lambda: all_ready(urls), timeout=30, what="the ingresses ready")
    return urls


def every_fallback_to(receiver_url: str, timeout: str = "10s") -> str:
    """A rules file that sends every fallback to the receiver's signed webhook."""
    return webhook_to(receiver_url, timeout=timeout)

"""The promise, tried as Braze would try it: a burst faster than the pipeline takes it,
to two ingresses, three workers on PostgreSQL and an executor, with a worker and the
executor SIGKILLed mid-way. No fallback for a message Braze delivered in time, exactly
one handler call for every message that failed or was late on Braze's clock.

The webhook receiver can be paused: the executor is killed while its calls wait there,
so the kill lands outside the one window no design closes (a provider took a call whose
success was not recorded yet: invariant 3 in docs/architecture.md); a call whose caller
is gone by the time the receiver would answer it was never taken.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from tests.support.burst_load import (
    Burst,
    Fate,
    PausableReceiver,
    every_fallback_to,
    offer,
    pipeline,
    plan_burst,
    serving,
    start_deployment,
)
from tests.support.processes import environment
from tests.support.waiting import wait_until
from txmail.core.durations import format_duration
from txmail.core.events import POSTBACK_TYPE, utc_now
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.state import message_key
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import DeliveryTimeouts

TIMEOUT = 2.0  # seconds: Braze delivers within a fifth of it, or too late by half
MESSAGES = 1500  # about 4,700 postbacks
PER_SECOND = 600  # messages starting each second of Braze's time: more than txmail takes
CONCURRENCY = 32
# Long enough for a call claimed by the killed executor to come free (its lease is the
# handler's timeout and a margin) before the request is parked.
SCHEDULE = [timedelta(seconds=s) for s in (0.5, 1, 2, 4, 8)]


@pytest.fixture
async def namespace(namespace: str, amqp_url: str) -> AsyncIterator[str]:
    """The fallback tests' namespace, plus this test's own delay queues."""
    yield namespace
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await Topology(namespace, tuple(SCHEDULE)).delete(await connection.channel())


async def _only_held_calls_open(database_url: str, receiver: PausableReceiver) -> bool:
    """Some calls wait at the receiver, and every other call claimed in the ledger has
    its outcome recorded."""
    connection = await asyncpg.connect(database_url)
    try:
        calling = await connection.fetchval(
            "SELECT count(*) FROM fallback_calls WHERE state = 'calling'"
        )
    finally:
        await connection.close()
    return receiver.waiting > 0 and calling == receiver.waiting


class Backlog:
    """How far the workers trail Braze: the age of the oldest postback Braze has emitted
    that no worker has applied yet, at its worst while the burst runs.

    The ingress's own lag is not enough: it may keep up while the workers fall behind,
    and it is the workers' lag that a sweep on the wall clock would mistake for timeouts.
    """

    def __init__(self, database_url: str, burst: Burst, started: float) -> None:
        self._url = database_url
        self._emitted = sorted(
            (p.at, message_key(p.body["metadata"]["external_send_id"], None), p.body["status"])
            for p in burst.postbacks
        )
        self._started = started
        self.worst = 0.0

    async def watch(self) -> None:
        """Sample until every postback is applied."""
        connection = await asyncpg.connect(self._url)
        try:
            # A sampler, five times a second: there is no event to wait on.
            while not await self._sample(connection):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        finally:
            await connection.close()

    async def _sample(self, connection: asyncpg.Connection) -> bool:
        """Take one sample; true once every postback is applied."""
        rows = await connection.fetch(
            "SELECT message_key, label FROM events WHERE kind = $1", POSTBACK_TYPE
        )
        applied = {(r["message_key"], r["label"]) for r in rows}
        elapsed = time.monotonic() - self._started
        for at, key, status in self._emitted:
            if at > elapsed:
                return False
            if (key, status) not in applied:
                self.worst = max(self.worst, elapsed - at)
                return False
        return True


async def _queues_empty(settings: Settings) -> bool:
    topology = Topology(settings.namespace, tuple(SCHEDULE))
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in (topology.tracker_queue, topology.fallback_queue):
            queue = await channel.declare_queue(name, passive=True)
            if queue.declaration_result.message_count:
                return False
    return True


async def _settled(
    store: Store, settings: Settings, burst: Burst, receiver: PausableReceiver
) -> bool:
    due = burst.with_fallback()
    called = {key for key, _ in receiver.taken}
    if not due <= called:
        return False
    counts = await store.counts()
    return counts.unpublished == 0 and await _queues_empty(settings)


@pytest.mark.timeout(240)
async def test_a_burst_with_a_worker_and_the_executor_killed_mid_way(
    fallback_settings: Settings, postgres_schema_url: str, tmp_path: Path
) -> None:
    settings = fallback_settings.model_copy(
        update={
            "database_url": postgres_schema_url,
            "delivery_timeout": timedelta(seconds=TIMEOUT),
            "sweep_interval": timedelta(milliseconds=100),
            "watermark_skew": timedelta(seconds=1),
            "max_lateness": timedelta(seconds=2),
            "batch_size": 100,
            "republish_after": timedelta(seconds=2),
        }
    )
    receiver = PausableReceiver()
    async with serving(receiver) as receiver_url:
        rules = tmp_path / "rules.toml"
        rules.write_text(every_fallback_to(receiver_url, timeout="1s"))
        env = {
            **environment(settings),
            "TXMAIL_RULES": str(rules),
            "TXMAIL_FALLBACK_RETRY_SCHEDULE": ",".join(map(format_duration, SCHEDULE)),
            "TXMAIL_HTTP_HOST": "127.0.0.1",
            "TXMAIL_METRICS_PORT": "0",
        }
        store = await open_store(postgres_schema_url, DeliveryTimeouts(timedelta(seconds=TIMEOUT)))
        try:
            with pipeline(env, tmp_path) as running:
                urls = await start_deployment(running)
                # Braze's schedule begins: its times, and when each postback is emitted.
                burst = plan_burst(MESSAGES, PER_SECOND, TIMEOUT, utc_now())
                started = time.monotonic()
                postbacks = burst.postbacks
                cut = [0, len(postbacks) * 2 // 5, len(postbacks) * 3 // 5, len(postbacks)]

                backlog = Backlog(postgres_schema_url, burst, started)
                watching = asyncio.ensure_future(backlog.watch())

                async def segment(n: int) -> None:
                    await offer(urls, postbacks[cut[n] : cut[n + 1]], CONCURRENCY, started)

                await segment(0)
                running.kill("worker-0")  # however it likes, wherever it was
                # The executor dies while calls wait at the receiver, not taken yet, and
                # every call it made before has its outcome recorded: outside the window.
                receiver.open.clear()
                offering = asyncio.ensure_future(segment(1))
                await wait_until(
                    lambda: _only_held_calls_open(postgres_schema_url, receiver),
                    timeout=30,
                    what="calls held at the receiver and none other open",
                )
                running.kill("executor")
                await wait_until(receiver.callers_gone, what="the held calls' callers gone")
                receiver.open.set()
                running.start("worker-0-again", "worker")
                running.start("executor-again", "fallback")
                await offering
                await segment(2)
                await asyncio.wait_for(watching, timeout=60)
                assert backlog.worst > TIMEOUT, (
                    f"the burst must put the workers behind by more than {TIMEOUT} s: "
                    f"{backlog.worst:.1f} s"
                )
                await wait_until(
                    lambda: _settled(store, settings, burst, receiver),
                    timeout=120,
                    what="every fallback called and every queue drained",
                )
        finally:
            await store.close()
    expected_trigger = {
        Fate.BOUNCED: "bounced",
        Fate.ABORTED: "aborted",
        Fate.LATE: "timeout",
        Fate.DELIVERED_LATE: "timeout",
    }
    false_fallbacks = sorted(
        key for (key, _), n in receiver.taken.items() if burst.fates[key] is Fate.DELIVERED
    )
    assert false_fallbacks == [], f"{len(false_fallbacks)} messages delivered in time got one"
    doubled = sorted(key for key, n in receiver.taken.items() if n > 1)
    assert doubled == [], f"{len(doubled)} handler calls made twice"
    for key, fate in burst.fates.items():
        if fate in expected_trigger:
            assert receiver.taken[(key, expected_trigger[fate])] == 1, (key, fate)
    assert sum(receiver.taken.values()) == len(burst.with_fallback())

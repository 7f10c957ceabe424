"""Worker benchmark: raw queue rate (aio-pika, and txmail's Consumer), worker end-to-end
rate on both stores (with its CPU per event and its time in the garbage collector), and
the sweep's claims.

Run with ``.venv/bin/python -m bench.worker`` against the local RabbitMQ and PostgreSQL
(or TXMAIL_BENCH_AMQP_URL / TXMAIL_BENCH_POSTGRES_URL); ``--sweep-only`` runs just the
sweep. Not part of CI.
"""

import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aio_pika
import asyncpg

from txmail.core import event_loop
from txmail.core.broker import Broker, Outgoing
from txmail.core.command import Configuration
from txmail.core.consumer import Consumer, Received
from txmail.core.events import POSTBACK_TYPE, event_id, postback_routing_key, utc_now
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.state import Message, StatusSeen
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import DeliveryTimeouts
from txmail.workers.worker import run_worker

AMQP_URL = os.environ.get("TXMAIL_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get(
    "TXMAIL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
EVENTS = 20_000
PENDING = 1_000_000
DUE = 1_000
CLAIMS = 5  # claims of DUE each, one after another: this machine swings run to run
# Due deadlines claimed once before timing, so connection warm-up (asyncpg's type
# introspection, statement preparation) is not counted as the sweep.
WARM_UP = 1_000
TIMEOUTS = DeliveryTimeouts(timedelta(hours=1))


def postbacks(count: int) -> list[Outgoing]:
    """Half `sent`, half `delivered`, two per message, as the ingress publishes them."""
    received_at = utc_now().isoformat()
    made = []
    for i in range(count):
        status = "sent" if i % 2 == 0 else "delivered"
        raw = {
            "dispatch_id": f"bench-{i // 2}",
            "status": status,
            "metadata": {"external_send_id": f"order-{i // 2}", "campaign_api_id": "c1"},
        }
        made.append(
            Outgoing(
                postback_routing_key(status),
                json.dumps(raw).encode(),
                event_id(raw),
                POSTBACK_TYPE,
                headers={"received_at": received_at},
            )
        )
    return made


@asynccontextmanager
async def namespace_with_backlog(count: int) -> AsyncIterator[Settings]:
    """A fresh namespace whose tracker queue holds ``count`` postbacks."""
    settings = Settings(amqp_url=AMQP_URL, namespace=f"txmail-bench-{uuid.uuid4().hex[:8]}")
    topology = Topology(settings.namespace)
    broker = Broker(AMQP_URL, topology, timedelta(seconds=30))
    broker.start()
    while not broker.is_ready:  # noqa: ASYNC110 -- a benchmark's set-up, not a service
        await asyncio.sleep(0.05)
    messages = postbacks(count)
    for start in range(0, count, 2000):
        await broker.publish(messages[start : start + 2000])
    await broker.close()
    try:
        yield settings
    finally:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            await topology.delete(await connection.channel())


class Acking:
    """A consumer's callback that does nothing but ack, every ``every`` deliveries at
    once, and says when the whole backlog was taken."""

    def __init__(self, every: int) -> None:
        self._every = every
        self._seen = 0
        self.done = asyncio.Event()

    async def __call__(self, message: Received | aio_pika.abc.AbstractIncomingMessage) -> None:
        self._seen += 1
        if self._seen % self._every == 0 or self._seen == EVENTS:
            await message.ack(multiple=True)
        if self._seen == EVENTS:
            self.done.set()


async def raw_consume_rate(ack_every: int) -> tuple[float, float]:
    """Consume the backlog with aio-pika doing nothing but ack, every ``ack_every``
    messages at once: msg/s, and CPU µs per delivery."""
    async with namespace_with_backlog(EVENTS) as settings:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=2 * settings.batch_size)
            queue = await channel.get_queue(Topology(settings.namespace).tracker_queue)
            acking = Acking(ack_every)
            started, cpu = time.perf_counter(), time.process_time()
            await queue.consume(acking)
            await acking.done.wait()
            return _rate_and_cpu(started, cpu)


async def consumer_rate(ack_every: int) -> tuple[float, float]:
    """The same through txmail's Consumer (aiormq's deliveries, as the worker takes them)."""
    async with namespace_with_backlog(EVENTS) as settings:
        topology = Topology(settings.namespace)
        acking = Acking(ack_every)
        consumer = Consumer(
            AMQP_URL, topology.tracker_queue, 2 * settings.batch_size, topology.declare, acking
        )
        started, cpu = time.perf_counter(), time.process_time()
        consumer.start()
        await acking.done.wait()
        measured = _rate_and_cpu(started, cpu)
        await consumer.close()
        return measured


def _rate_and_cpu(started: float, cpu: float) -> tuple[float, float]:
    return (
        EVENTS / (time.perf_counter() - started),
        (time.process_time() - cpu) / EVENTS * 1_000_000,
    )


_LAST_KEY = f"order-{(EVENTS - 1) // 2}"  # the message of the backlog's last postback


async def _applied(store: Store, external_send_id: str, status: str) -> bool:
    found = await store.find(external_send_id=external_send_id)
    return found is not None and any(e.label == status for e in found.timeline)


class CollectorTime:
    """Seconds this process spent in the garbage collector since it was made."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._timed)

    def _timed(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started

    def stop(self) -> None:
        gc.callbacks.remove(self._timed)


@dataclass(frozen=True)
class WorkerRun:
    rate: float  # events a second, published -> all committed
    cpu_us: float  # the process's CPU per event, SQLite's thread included
    collecting: float  # seconds in the garbage collector

    def line(self, store: str, raw: float) -> str:
        return (
            f"worker end-to-end, {store:<11}{self.rate:6.0f} events/s ({self.rate / raw:.0%} of "
            f"raw), {self.cpu_us:4.0f} CPU-µs each, {self.collecting * 1000:.0f} ms collecting"
        )


async def worker_rate(database_url: str) -> WorkerRun:
    async with namespace_with_backlog(EVENTS) as settings:
        settings = settings.model_copy(update={"database_url": database_url})
        store = await open_store(database_url, TIMEOUTS)
        stop = asyncio.Event()
        collector = CollectorTime()
        started, cpu = time.perf_counter(), time.process_time()
        worker = asyncio.create_task(run_worker(Configuration(settings, None), store, stop))
        # One worker applies its batches in the queue's order: once the last postback is
        # in, every one is. Asking for it is two indexed reads, where counting the tables
        # each poll took the store's time from the worker being measured.
        while not await _applied(store, _LAST_KEY, "delivered"):  # noqa: ASYNC110 -- polls
            await asyncio.sleep(0.05)
        measured = WorkerRun(*_rate_and_cpu(started, cpu), collector.seconds)
        collector.stop()
        if (applied := (await store.counts()).events) != EVENTS:
            raise RuntimeError(f"{applied} of {EVENTS} events applied")
        stop.set()
        await worker
        await store.close()
        return measured


def _summary(key: str) -> str:
    past = utc_now() - timedelta(hours=2)
    seen = StatusSeen(received_at=past, event_id=key)
    return Message(key=key, dispatch_id=key, statuses={"sent": seen}).model_dump_json()


FIND_DUE_POSTGRES = (
    "SELECT message_key FROM messages WHERE deadline <= $1 ORDER BY deadline LIMIT $2"
)
FIND_DUE_SQLITE = "SELECT message_key FROM messages WHERE deadline <= ? ORDER BY deadline LIMIT ?"


async def postgres_sweep(url: str) -> tuple[float, list[float]]:
    """Seconds to find the due deadlines, and to claim them (find, decide, write)."""
    schema = f"txmail_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        schema_url = f"{url}{'&' if '?' in url else '?'}search_path={schema}"
        store = await open_store(schema_url, TIMEOUTS)
        db = await asyncpg.connect(schema_url)
        now = utc_now()
        due = DUE * CLAIMS + WARM_UP
        # A generator, not a list: a million rows kept alive in this process would make
        # every full garbage collection during the claim walk them (tens of ms), which a
        # worker's heap does not hold.
        rows = (
            (
                f"k{i}",
                "in_flight",
                now + (timedelta(seconds=-1) if i < due else timedelta(hours=1, seconds=i % 3600)),
                _summary(f"k{i}") if i < due else "{}",
                now,
                now,
            )
            for i in range(PENDING + WARM_UP)
        )
        await db.copy_records_to_table(
            "messages",
            records=rows,
            columns=["message_key", "outcome", "deadline", "summary", "created_at", "updated_at"],
        )
        await db.execute("ANALYZE messages")
        await store.claim_due(utc_now(), WARM_UP)
        started = time.perf_counter()
        found = await db.fetch(FIND_DUE_POSTGRES, utc_now(), DUE)
        finding = time.perf_counter() - started
        await db.close()
        if len(found) != DUE:
            raise RuntimeError(f"found {len(found)} of {DUE} due deadlines")
        claiming = await _claims(store)
        await store.close()
        return finding, claiming
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def sqlite_sweep(path: Path) -> tuple[float, list[float]]:
    """Seconds to find the due deadlines, and to claim them (find, decide, write)."""
    import sqlite3

    from txmail.core.database import to_micros

    store = await open_store(f"sqlite:///{path}", TIMEOUTS)
    now = utc_now()
    due = DUE * CLAIMS + WARM_UP
    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO messages (message_key, outcome, deadline, summary, created_at, updated_at) "
        "VALUES (?, 'in_flight', ?, ?, ?, ?)",
        (
            (
                f"k{i}",
                to_micros(now + (timedelta(seconds=-1) if i < due else timedelta(hours=1))),
                _summary(f"k{i}") if i < due else "{}",
                to_micros(now),
                to_micros(now),
            )
            for i in range(PENDING + WARM_UP)
        ),
    )
    db.commit()
    db.execute("ANALYZE")
    await store.claim_due(utc_now(), WARM_UP)
    started = time.perf_counter()
    found = db.execute(FIND_DUE_SQLITE, (to_micros(utc_now()), DUE)).fetchall()
    finding = time.perf_counter() - started
    db.close()
    if len(found) != DUE:
        raise RuntimeError(f"found {len(found)} of {DUE} due deadlines")
    claiming = await _claims(store)
    await store.close()
    return finding, claiming


async def _claims(store: Store) -> list[float]:
    """Seconds each of CLAIMS claims of DUE due deadlines took."""
    took = []
    for _ in range(CLAIMS):
        started = time.perf_counter()
        claimed = await store.claim_due(utc_now(), DUE)
        took.append(time.perf_counter() - started)
        if len(claimed) != DUE:
            raise RuntimeError(f"claimed {len(claimed)} of {DUE} due deadlines")
    return took


def _sweep_line(database: str, finding: float, claiming: list[float]) -> str:
    each = ", ".join(f"{c * 1000:.0f}" for c in claiming)
    return (
        f"sweep, {database:<11} find {finding * 1000:.1f} ms, claim median "
        f"{statistics.median(claiming) * 1000:.1f} ms ({each}), {DUE} due among {PENDING:,}"
    )


async def main(sweep_only: bool) -> None:
    if not sweep_only:
        await consume_and_worker_rates()
    print(_sweep_line("PostgreSQL:", *await postgres_sweep(POSTGRES_URL)))
    with tempfile.TemporaryDirectory() as scratch:
        print(_sweep_line("SQLite:", *await sqlite_sweep(Path(scratch) / "sweep.db")))


async def consume_and_worker_rates() -> None:
    each, each_cpu = await raw_consume_rate(1)
    print(f"raw consume, ack each:     {each:8.0f} msg/s, {each_cpu:5.1f} CPU-µs each")
    raw, raw_cpu = await raw_consume_rate(200)
    print(
        f"raw consume, ack per 200:  {raw:8.0f} msg/s, {raw_cpu:5.1f} CPU-µs each"
        "  (the worker's ack pattern; the baseline)"
    )
    taken, taken_cpu = await consumer_rate(200)
    print(f"Consumer, ack per 200:     {taken:8.0f} msg/s, {taken_cpu:5.1f} CPU-µs each")
    with tempfile.TemporaryDirectory() as scratch:
        on_sqlite = await worker_rate(f"sqlite:///{Path(scratch) / 'bench.db'}")
    print(on_sqlite.line("SQLite:", raw))
    schema = f"txmail_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        on_postgres = await worker_rate(f"{POSTGRES_URL}?search_path={schema}")
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
    print(on_postgres.line("PostgreSQL:", raw))


if __name__ == "__main__":
    # As a service runs: uvloop, the collector tuned.
    event_loop.run(main(sweep_only="--sweep-only" in sys.argv[1:]))

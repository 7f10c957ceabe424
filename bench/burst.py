"""A burst through the whole pipeline: how far behind txmail falls, and whether it stays right.

Two ingresses, three workers on PostgreSQL and one executor with a webhook rule, as
separate processes on this machine. The postbacks of MESSAGES sends are "emitted by
Braze" far faster than txmail takes them, and posted one per request as soon as a
connection is free, so the rest waits in front of the ingress as it would at Braze.
Prints the accepted rate, how far behind Braze's schedule txmail fell at worst, how
long it took to catch up once the offering ended, false fallbacks and doubled handler
calls (goal 0 each), and bounce accepted -> handler called latency.

    python -m bench.burst [--messages 60000] [--concurrency 64]

Needs RabbitMQ and PostgreSQL (TXMAIL_AMQP_URL, TXMAIL_BENCH_POSTGRES_URL, defaults on
localhost). Not a test: it never fails on speed.
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import asyncpg

from tests.support.burst_load import (
    Burst,
    Fate,
    Offered,
    PausableReceiver,
    Pipeline,
    every_fallback_to,
    offer,
    pipeline,
    plan_burst,
    serving,
    start_deployment,
)
from tests.support.waiting import wait_until
from txmail.core.events import utc_now
from txmail.core.settings import Settings
from txmail.core.topology import Topology

AMQP_URL = os.environ.get("TXMAIL_AMQP_URL", "amqp://guest:guest@localhost:5672/")
POSTGRES_URL = os.environ.get(
    "TXMAIL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TIMEOUT = 10.0  # seconds, on Braze's clock
# Small, so that the catch-up measures txmail, not how long deadlines wait for Braze's
# stream (the skew) or for the silence after the burst (the lateness bound).
SKEW, LATENESS = "2s", "5s"
PER_SECOND = 5_000  # messages "emitted" per second: far more than one machine takes


async def queued(namespace: str) -> int:
    topology = Topology(namespace)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        total = 0
        for name in (topology.tracker_queue, topology.fallback_queue):
            queue = await channel.declare_queue(name, passive=True)
            total += queue.declaration_result.message_count or 0
        return total


async def caught_up(namespace: str, burst: Burst, receiver: PausableReceiver) -> bool:
    called = {key for key, _ in receiver.taken}
    return burst.with_fallback() <= called and await queued(namespace) == 0


def ms(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else 0.0


@asynccontextmanager
async def deployment() -> AsyncIterator[tuple[Pipeline, dict[str, str], PausableReceiver]]:
    """A namespace, a PostgreSQL schema, a webhook receiver every fallback goes to, and
    txmail's processes started in them (``start_deployment``); all removed after."""
    namespace = f"txmail-bench-{uuid.uuid4().hex[:8]}"
    schema = f"txmail_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    receiver = PausableReceiver()
    try:
        with tempfile.TemporaryDirectory() as folder:
            async with serving(receiver) as receiver_url:
                rules = Path(folder) / "rules.toml"
                rules.write_text(every_fallback_to(receiver_url))
                env = {
                    **os.environ,
                    "TXMAIL_AMQP_URL": AMQP_URL,
                    "TXMAIL_NAMESPACE": namespace,
                    "TXMAIL_DATABASE_URL": f"{POSTGRES_URL}?search_path={schema}",
                    "TXMAIL_DELIVERY_TIMEOUT": f"{TIMEOUT:.0f}s",
                    "TXMAIL_WATERMARK_SKEW": SKEW,
                    "TXMAIL_MAX_LATENESS": LATENESS,
                    "TXMAIL_RULES": str(rules),
                    "TXMAIL_HTTP_HOST": "127.0.0.1",
                    "TXMAIL_METRICS_PORT": "0",
                    "TXMAIL_LOG_LEVEL": "warning",
                }
                with pipeline(env, Path(folder)) as running:
                    yield running, env, receiver
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            # With the delay queues the executor declared for its (default) schedule.
            delays = tuple(Settings(namespace=namespace).fallback_retry_schedule)
            await Topology(namespace, delays).delete(await connection.channel())


async def run(messages: int, concurrency: int) -> None:
    async with deployment() as (running, env, receiver):
        namespace = env["TXMAIL_NAMESPACE"]
        urls = await start_deployment(running)
        burst = plan_burst(messages, PER_SECOND, TIMEOUT, utc_now())
        started = time.monotonic()
        offered = await offer(urls, burst.postbacks, concurrency, started)
        offering = time.monotonic() - started
        await wait_until(
            lambda: caught_up(namespace, burst, receiver), timeout=3600, what="catch-up"
        )
        catch_up = time.monotonic() - started - offering
    _report(burst, offered, offering, catch_up, receiver)


def _report(
    burst: Burst, offered: Offered, offering: float, catch_up: float, receiver: PausableReceiver
) -> None:
    false = [key for key, _ in receiver.taken if burst.fates[key] is Fate.DELIVERED]
    doubled = [key for key, n in receiver.taken.items() if n > 1]
    missing = burst.with_fallback() - {key for key, _ in receiver.taken}
    failures = {Fate.BOUNCED, Fate.ABORTED}
    latencies = [
        receiver.first_taken_at[key] - offered.accepted_at[key]
        for key, fate in burst.fates.items()
        if fate in failures and key in receiver.first_taken_at and key in offered.accepted_at
    ]
    fates = Counter(burst.fates.values())
    print(f"messages {len(burst.fates):,} ({', '.join(f'{f} {n:,}' for f, n in fates.items())})")
    print(
        f"postbacks accepted      {offered.accepted:,} in {offering:.1f}s: "
        f"{offered.accepted / offering:,.0f}/s"
    )
    print(f"503s posted again       {offered.refused:,}")
    print(f"worst lag behind Braze  {offered.worst_lag:.1f}s (delivery timeout {TIMEOUT:.0f}s)")
    print(f"catch-up after offering {catch_up:.1f}s (skew {SKEW}, lateness bound {LATENESS})")
    print(f"false fallbacks         {len(false)} (goal 0)")
    print(f"doubled handler calls   {len(doubled)} (goal 0)")
    print(f"fallbacks missing       {len(missing)} (goal 0)")
    print(
        f"failure accepted -> handler called: p50 {ms(latencies, 50):,.0f} ms, "
        f"p99 {ms(latencies, 99):,.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.concurrency))


if __name__ == "__main__":
    main()

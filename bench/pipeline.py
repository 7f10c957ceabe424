"""What the whole pipeline costs per postback, at a fixed offered rate.

Two `txmail ingress`, three `txmail worker` on PostgreSQL (``--ingresses``,
``--workers``), one `txmail fallback` with a webhook rule for every trigger and one
`txmail api`, as separate processes on this machine. Postbacks (the burst test's mix:
delivered, bounced, aborted, never delivered, some posted twice) are posted one per
request, as Braze posts them, at ``--rate`` a second for ``--seconds``; then the bench
waits until every fallback due was called and the queues are empty. Prints:

- the offered rate, and how far behind that schedule the acceptances fell at worst (a
  rate is sustained when that stays well under a second);
- CPU-ms per accepted postback for each kind of process, from /proc/<pid>/stat, over
  the whole run (the tail waiting for the timeouts included); the executor's also per
  fallback called;
- peak RSS of each process (VmHWM in /proc/<pid>/status);
- accepted -> committed p50/p99 (a message's latest event's arrival at the ingress to
  the worker's write of the message, both stamped on this machine's clock) and
  bounce -> handler p50/p99 (a bounce or abort accepted to the webhook called).

    python -m bench.pipeline [--rate 300] [--seconds 20] [--ingresses 2] [--workers 3]

Needs RabbitMQ and PostgreSQL (TXMAIL_AMQP_URL, TXMAIL_BENCH_POSTGRES_URL, defaults on
localhost) and Linux (/proc). Not a test: it never fails on speed.
"""

import argparse
import asyncio
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.burst import TIMEOUT, caught_up, deployment, ms
from bench.ingress import cpu_seconds
from tests.support.burst_load import (
    Burst,
    Offered,
    PausableReceiver,
    Pipeline,
    offer,
    plan_burst,
    start_deployment,
)
from tests.support.ports import free_port
from tests.support.waiting import wait_until
from txmail.core.events import utc_now

# Postbacks per message in the burst's mix (three for most, one for an abort, a tenth
# posted twice): the messages a second that make the offered rate.
POSTBACKS_PER_MESSAGE = 3.08


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _all_idle(pids: dict[str, int]) -> bool:
    """Every process spent under 5 % of a core over half a second: started, so that
    what is measured after is the postbacks' cost, not the imports'."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await asyncio.sleep(0.5)
    return all(cpu_seconds(pid) - before[name] < 0.025 for name, pid in pids.items())


@dataclass
class Run:
    offered_rate: float
    offering: float  # seconds
    offered: Offered
    burst: Burst
    receiver: PausableReceiver
    cpu: dict[str, float]  # seconds, by process name
    rss: dict[str, float]  # MB, by process name
    committed: list[float]  # seconds, accepted -> committed, one per message


async def _committed_latencies(database_url: str) -> list[float]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            """SELECT EXTRACT(EPOCH FROM m.updated_at - latest.received_at) AS seconds
               FROM messages m JOIN (
                   SELECT message_key, max(received_at) AS received_at
                   FROM events GROUP BY message_key
               ) latest USING (message_key)"""
        )
    finally:
        await connection.close()
    return [float(r["seconds"]) for r in rows]


@dataclass(frozen=True)
class Shape:
    """How many of each process the deployment runs."""

    ingresses: int
    workers: int


async def _measure(
    running: Pipeline,
    env: dict[str, str],
    receiver: PausableReceiver,
    shape: Shape,
    rate: float,
    seconds: float,
) -> Run:
    urls = await start_deployment(running, shape.ingresses, shape.workers)
    running.start("api", "api", TXMAIL_API_PORT=str(free_port()), TXMAIL_API_HOST="127.0.0.1")
    pids = {name: process.pid for name, process in running.processes.items()}
    await wait_until(lambda: _all_idle(pids), timeout=60, what="every process started")
    messages = int(rate * seconds / POSTBACKS_PER_MESSAGE)
    burst = plan_burst(messages, rate / POSTBACKS_PER_MESSAGE, TIMEOUT, utc_now())
    # Braze's schedule: ``rate`` a second for ``seconds``, then the stragglers (a
    # delivered that comes after the timeout) for as long again and a half.
    offered_rate = sum(p.at < seconds for p in burst.postbacks) / seconds
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    offered = await offer(urls, burst.postbacks, 64, started)
    offering = time.monotonic() - started
    await wait_until(
        lambda: caught_up(env["TXMAIL_NAMESPACE"], burst, receiver), timeout=600, what="catch-up"
    )
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    rss = {name: peak_rss_mb(pid) for name, pid in pids.items()}
    committed = await _committed_latencies(env["TXMAIL_DATABASE_URL"])
    return Run(offered_rate, offering, offered, burst, receiver, cpu, rss, committed)


async def run(shape: Shape, rate: float, seconds: float) -> None:
    async with deployment() as (running, env, receiver):
        measured = await _measure(running, env, receiver, shape, rate, seconds)
    _report(measured)


def _kind(name: str) -> str:
    return name.split("-")[0]


def _report(run: Run) -> None:
    accepted = run.offered.accepted
    called = sum(run.receiver.taken.values())
    print(
        f"{os.cpu_count()} cores; offered {run.offered_rate:,.0f} postbacks/s, one per request, "
        f"then the stragglers"
    )
    print(
        f"accepted {accepted:,} in {run.offering:.1f}s ({run.offered.refused:,} 503s posted "
        f"again), at worst {run.offered.worst_lag:.2f}s behind the offered schedule; "
        f"fallbacks called {called:,}"
    )
    by_kind: dict[str, float] = defaultdict(float)
    for name, seconds in run.cpu.items():
        by_kind[_kind(name)] += seconds
    for kind, seconds in by_kind.items():
        per_fallback = f", {seconds * 1000 / called:.2f} per fallback" if kind == "executor" else ""
        print(f"CPU-ms per postback  {kind:<9} {seconds * 1000 / accepted:6.2f}{per_fallback}")
    print(f"CPU-ms per postback  all       {sum(by_kind.values()) * 1000 / accepted:6.2f}")
    print("peak RSS (MB)        " + ", ".join(f"{n} {mb:.0f}" for n, mb in run.rss.items()))
    latencies = [
        run.receiver.first_taken_at[key] - run.offered.accepted_at[key]
        for key in run.offered.accepted_at
        if key in run.receiver.first_taken_at
    ]
    print(
        f"accepted -> committed p50 {ms(run.committed, 50):,.0f} ms, "
        f"p99 {ms(run.committed, 99):,.0f} ms"
    )
    print(f"bounce -> handler     p50 {ms(latencies, 50):,.0f} ms, p99 {ms(latencies, 99):,.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300, help="postbacks offered a second")
    parser.add_argument("--seconds", type=float, default=20, help="how long they are offered")
    parser.add_argument("--ingresses", type=int, default=2, help="txmail ingress processes")
    parser.add_argument("--workers", type=int, default=3, help="txmail worker processes")
    args = parser.parse_args()
    asyncio.run(run(Shape(args.ingresses, args.workers), args.rate, args.seconds))


if __name__ == "__main__":
    main()

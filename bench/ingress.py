"""How fast the ingress takes postbacks, next to what bounds it.

Runs, one after the other on this machine, at 64 concurrent connections, and again for
each round:
  1. the ingress (`txmail ingress`, its own process) publishing to RabbitMQ with confirms;
  2. a bare aiohttp handler (its own process, on the services' event loop) that answers
     202 without publishing;
  3. raw aio-pika publishing with confirms, 64 publishes in flight, of the same bodies.
Prints postbacks per second, p50 and p99 latency of each, and the ratios of the rates
(their median over the rounds); and what each load cost per request, from /proc (a
shared machine disturbs it less than the rates): the CPU-ms of the server's process and
its write calls (each a send: to the client, to RabbitMQ), of this process (the load
generator, or the raw publisher), and of RabbitMQ when it runs on this machine. On a
machine where they all share the cores, those sums bound the ratios.

    python -m bench.ingress [--requests 20000] [--concurrency 64] [--rounds 3]

Needs a RabbitMQ (TXMAIL_AMQP_URL, default localhost). Not a test: it never fails on speed.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiohttp
from aiohttp import web

from txmail.core import event_loop
from txmail.core.topology import Topology

AMQP_URL = os.environ.get("TXMAIL_AMQP_URL", "amqp://guest:guest@localhost:5672/")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system time the process has used so far (Linux, /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def local_broker() -> int | None:
    """The pid of RabbitMQ's Erlang VM when it runs on this machine."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "beam.smp":
                return int(comm.parent.name)
        except OSError:
            continue  # ended while we looked
    return None


BROKER = local_broker()


def write_calls(pid: int) -> int:
    """The write system calls the process has made so far (Linux, /proc: syscw)."""
    counters = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(counters["syscw"])


def body(i: int) -> bytes:
    return json.dumps(
        {
            "dispatch_id": f"bench-{i:08d}",
            "status": "delivered",
            "metadata": {
                "delivered_at": "2020-08-31T18:27:32.000+00:00",
                "campaign_api_id": "417220e4-5a2a-b634-7f7d-9ec891532368",
                "external_send_id": f"order-{i}",
            },
        }
    ).encode()


@dataclass
class Spent:
    """CPU and write calls, per request, of who took part in a load."""

    server_cpu_ms: float | None  # the server's process (the ingress, the bare handler)
    server_writes: float | None  # its write calls: each a send, to the client or RabbitMQ
    generator_cpu_ms: float  # this process: the HTTP load generator, or the raw publisher
    broker_cpu_ms: float | None  # RabbitMQ, when it runs on this machine


class Meter:
    """What the server's process, this one and RabbitMQ spend from now on."""

    def __init__(self, server: int | None) -> None:
        self._server = server
        self._server_cpu = None if server is None else cpu_seconds(server)
        self._server_writes = None if server is None else write_calls(server)
        self._generator_cpu = time.process_time()
        self._broker_cpu = None if BROKER is None else cpu_seconds(BROKER)

    def per_request(self, count: int) -> Spent:
        def ms(before: float | None, pid: int | None) -> float | None:
            return (
                None
                if before is None or pid is None
                else (cpu_seconds(pid) - before) * 1000 / count
            )

        writes = (
            None
            if self._server is None or self._server_writes is None
            else (write_calls(self._server) - self._server_writes) / count
        )
        return Spent(
            server_cpu_ms=ms(self._server_cpu, self._server),
            server_writes=writes,
            generator_cpu_ms=(time.process_time() - self._generator_cpu) * 1000 / count,
            broker_cpu_ms=ms(self._broker_cpu, BROKER),
        )


@dataclass
class Result:
    name: str
    count: int
    seconds: float
    latencies: list[float]
    spent: Spent | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def percentile(self, p: float) -> float:
        return statistics.quantiles(self.latencies, n=100)[int(p) - 1] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<28} {self.rate:>7,.0f}/s  p50 {self.percentile(50):5.1f} ms"
            f"  p99 {self.percentile(99):5.1f} ms  {self._spent()}"
        )

    def _spent(self) -> str:
        if self.spent is None:
            return ""
        parts = []
        if self.spent.server_cpu_ms is not None:
            parts.append(
                f"server {self.spent.server_cpu_ms:.2f} ({self.spent.server_writes:.2f} writes)"
            )
        generator = "load generator" if self.spent.server_cpu_ms is not None else "publisher"
        parts.append(f"{generator} {self.spent.generator_cpu_ms:.2f}")
        if self.spent.broker_cpu_ms is not None:
            parts.append(f"RabbitMQ {self.spent.broker_cpu_ms:.2f}")
        return "CPU-ms per request: " + ", ".join(parts)


async def run_load(
    name: str, total: int, concurrency: int, one: Callable[[int], Awaitable[None]]
) -> Result:
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, total, time.perf_counter() - start, latencies)


class Connection:
    """A bare HTTP/1.1 keep-alive client connection: far cheaper per request than a full
    client library, so the load generator takes less of the two cores from the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, path: str, payload: bytes) -> int:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status


async def http_load(name: str, port: int, total: int, concurrency: int, pid: int) -> Result:
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(concurrency):
        idle.put_nowait(Connection(*await asyncio.open_connection("127.0.0.1", port)))

    async def one(i: int) -> None:
        connection = await idle.get()
        status = await connection.post("/postbacks", body(i))
        idle.put_nowait(connection)
        if status != 202:
            raise SystemExit(f"{name}: got {status}")

    await run_load(name, min(500, total), concurrency, one)  # warm-up
    meter = Meter(pid)
    result = await run_load(name, total, concurrency, one)
    result.spent = meter.per_request(total)
    while not idle.empty():
        idle.get_nowait().writer.close()
    return result


async def raw_publish_load(namespace: str, total: int, concurrency: int) -> Result:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await Topology(namespace).declare(channel)

        async def one(i: int) -> None:
            message = aio_pika.Message(
                body(i),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=uuid.uuid4().hex,
            )
            await exchange.publish(message, "postback.delivered")

        await run_load("raw", min(500, total), concurrency, one)
        meter = Meter(None)
        result = await run_load("raw aio-pika publish+confirm", total, concurrency, one)
        result.spent = meter.per_request(total)
        return result


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL
    )


async def wait_ready(port: int, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"server on {port} never became ready")


async def serve_bare(port: int) -> None:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"accepted": 1}, status=202)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_post("/postbacks", accept)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def purge(namespace: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        await Topology(namespace).delete(await connection.channel())


async def main(total: int, concurrency: int, rounds: int) -> None:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    ingress = await start(
        "-m",
        "txmail.cli",
        "ingress",
        env={
            "TXMAIL_NAMESPACE": namespace,
            "TXMAIL_HTTP_HOST": "127.0.0.1",
            "TXMAIL_HTTP_PORT": "18480",
            "TXMAIL_LOG_LEVEL": "warning",
            "TXMAIL_AMQP_URL": AMQP_URL,
        },
    )
    bare = await start(__file__, "--serve-bare", "18481", env={})
    print(f"{total} postbacks per load, {concurrency} concurrent, on {os.cpu_count()} cores")
    # The three loads alternate, round after round: this machine's speed drifts over
    # minutes, and each ratio compares loads run next to each other.
    to_raw, to_bare = [], []
    try:
        await wait_ready(18480, "/readyz")
        await wait_ready(18481, "/readyz")
        for round in range(1, rounds + 1):
            results = [
                await http_load("txmail ingress", 18480, total, concurrency, ingress.pid),
                await http_load("bare aiohttp 202", 18481, total, concurrency, bare.pid),
                await raw_publish_load(namespace, total, concurrency),
            ]
            for result in results:
                print(f"round {round}  {result.line()}", flush=True)
            to_raw.append(results[0].rate / results[2].rate)
            to_bare.append(results[0].rate / results[1].rate)
    finally:
        for server in (ingress, bare):
            server.terminate()
            await server.wait()
        await purge(namespace)
    print(_ratio("ingress / raw publish rate", to_raw))
    print(_ratio("ingress / bare handler rate", to_bare))


def _ratio(name: str, each_round: list[float]) -> str:
    rounds = ", ".join(f"{r:.0%}" for r in each_round)
    return f"{name}: median {statistics.median(each_round):.0%} (rounds: {rounds})"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        event_loop.run(serve_bare(args.serve_bare))  # as the ingress runs: uvloop's writes
    else:
        asyncio.run(main(args.requests, args.concurrency, args.rounds))

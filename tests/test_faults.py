"""Faults a deployment survives under load: the broker connections of the worker and of
the executor cut, PostgreSQL unreachable, the webhook receiver down for longer than the
first retries. Real processes as an operator runs them (ingress, worker, executor and
api on PostgreSQL); the worker's and the executor's broker connections, every database
connection and the receiver each behind a TCP proxy the test cuts and restores.

Each test then proves: every postback the ingress accepted is on its message's timeline,
every bounce got exactly one handler call and no delivered message got one; and while
the fault lasts, each /readyz and the api say what is true.

The executor SIGKILLed and restarted is proven elsewhere: mid-way through a burst, while
its calls wait at the receiver, in tests/fallback/test_burst_and_crash.py; between the
handlers of an `all` chain in tests/fallback/test_once.py
(test_an_executor_killed_mid_chain_does_not_call_a_done_handler_again).
"""

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import pytest

from tests.support.amqp import queue_depth
from tests.support.broker_url import host_and_port, via_port
from tests.support.burst_load import (
    PausableReceiver,
    Pipeline,
    Planned,
    every_fallback_to,
    offer,
    serving,
)
from tests.support.ports import free_port
from tests.support.processes import environment
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.durations import format_duration
from txmail.core.events import event_id
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import DeliveryTimeouts

# Long enough for a call whose caller lost its broker connection mid-way to come free
# (its lease is the handler's timeout and a margin) before the request is parked.
SCHEDULE = [timedelta(seconds=s) for s in (0.5, 1, 2, 4, 8)]
TOKEN = "faults-token"


@pytest.fixture
async def namespace(namespace: str, amqp_url: str) -> AsyncIterator[str]:
    """The shared namespace, plus the delay queues of this module's retry schedule."""
    yield namespace
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await Topology(namespace, tuple(SCHEDULE)).delete(await connection.channel())


@dataclass
class Load:
    """Messages as Braze reports them: every third one bounces, the others are delivered."""

    postbacks: list[Planned]
    bounced: set[str]  # external_send_ids that must get exactly one handler call
    events: dict[str, set[str]]  # external_send_id -> ids of its postbacks


def plan(prefix: str, messages: int, seconds: float) -> Load:
    """``messages`` sends spread over ``seconds``, each a `sent` and then its verdict."""
    load = Load([], set(), {})
    for i in range(messages):
        key = f"{prefix}-{i:04d}"
        verdict = "bounced" if i % 3 == 0 else "delivered"
        if verdict == "bounced":
            load.bounced.add(key)
        at = seconds * i / messages
        bodies = [
            {"dispatch_id": f"d-{key}", "status": status, "metadata": {"external_send_id": key}}
            for status in ("sent", verdict)
        ]
        load.postbacks += [Planned(at, bodies[0]), Planned(at + 0.05, bodies[1])]
        load.events[key] = {event_id(body) for body in bodies}
    return load


@dataclass
class Deployment:
    running: Pipeline
    ingress: str
    worker_health: int
    executor_health: int
    api: int
    broker: TcpProxy  # between RabbitMQ and the worker and executor (not the ingress)
    database: TcpProxy  # between PostgreSQL and every process that uses it
    hook: TcpProxy  # between the executor and the webhook receiver
    receiver: PausableReceiver
    database_url: str  # straight to PostgreSQL, for the test's own questions
    store: Store

    async def post(self, load: Load) -> None:
        offered = await offer([self.ingress], load.postbacks, 16, time.monotonic(), TOKEN)
        assert offered.accepted == len(load.postbacks)

    async def settled(self, *loads: Load) -> bool:
        """Every message known, every decision published, and every bounce called back
        with its success on the message's timeline: nothing left to do."""
        bounced = set().union(*(load.bounced for load in loads))
        if not bounced <= {key for key, _ in self.receiver.taken}:
            return False  # cheap: asked before the store
        counts = await self.store.counts()
        if counts.unpublished or counts.messages < sum(len(x.events) for x in loads):
            return False
        for key in bounced:
            if "succeeded" not in [a["outcome"] for a in await attempts(self.store, key)]:
                return False
        return True


async def readiness(port: int) -> tuple[int, Any]:
    """A health port's /readyz: status and JSON body, (0, None) while nothing listens."""
    return await get(port, "/readyz")


async def get(port: int, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response,
        ):
            return response.status, await response.json()
    except aiohttp.ClientConnectionError:
        return 0, None


def ready(port: int) -> Any:
    async def check() -> bool:
        return (await readiness(port))[0] == 200

    return check


def says(port: int, problem: str) -> Any:
    async def check() -> bool:
        status, body = await readiness(port)
        return status == 503 and any(problem in p for p in body["problems"])

    return check


async def not_ready_saying(problems: dict[int, str]) -> None:
    """Wait until the /readyz of each port answers 503 listing its problem."""
    for port, problem in problems.items():
        await wait_until(says(port, problem), what=f"/readyz on port {port} to say {problem!r}")


async def attempts(store: Store, key: str) -> list[dict[str, Any]]:
    """The executor's attempts for the message, as its timeline has them, in order."""
    message = await store.find(external_send_id=key)
    timeline = message.timeline if message else []
    made = [entry.body for entry in timeline if entry.kind == "fallback_attempt"]
    return sorted(made, key=lambda attempt: attempt["attempt"])


async def stop_all(running: Pipeline, *names: str) -> None:
    """SIGTERM the processes named (every one if none is) and wait for each to end by
    itself, with the event loop free: their connections go through this loop's proxies."""
    stopping = {name: running.processes[name] for name in names or running.processes}
    for process in stopping.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    try:
        await wait_until(
            lambda: all(p.poll() is not None for p in stopping.values()),
            timeout=15,
            what=f"{', '.join(stopping)} to stop on SIGTERM",
        )
    finally:
        for process in stopping.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    assert {name: p.returncode for name, p in stopping.items()} == dict.fromkeys(stopping, 0)


async def waiting_in(settings: Settings, queues: Iterable[str]) -> dict[str, int]:
    """How many messages wait in each queue (not counting those a consumer holds)."""
    return {name: await queue_depth(settings.amqp_url, name) for name in queues}


def drained(settings: Settings, queues: Iterable[str]) -> Any:
    async def check() -> bool:
        return not any((await waiting_in(settings, queues)).values())

    return check


async def proxy_to(host: str, port: int) -> TcpProxy:
    proxy = TcpProxy(host, port)
    await proxy.start()
    return proxy


@asynccontextmanager
async def deployment(
    settings: Settings, postgres_url: str, tmp_path: Path
) -> AsyncIterator[Deployment]:
    async with AsyncExitStack() as stack:
        receiver = PausableReceiver()
        receiver_url = await stack.enter_async_context(serving(receiver))
        receiver_port = int(receiver_url.rsplit(":", 1)[1])
        proxies = [
            await proxy_to(*host_and_port(settings.amqp_url)),
            await proxy_to("127.0.0.1", host_and_port(postgres_url)[1]),
            await proxy_to("127.0.0.1", receiver_port),
        ]
        for proxy in proxies:
            stack.push_async_callback(proxy.close)
        broker, database, hook = proxies
        rules = tmp_path / "rules.toml"
        rules.write_text(every_fallback_to(f"http://127.0.0.1:{hook.port}", timeout="1s"))
        env = {
            **environment(settings),
            "TXMAIL_DATABASE_URL": via_port(postgres_url, database.port),
            "TXMAIL_DELIVERY_TIMEOUT": "1h",  # no timeouts: only bounces call back
            "TXMAIL_RULES": str(rules),
            "TXMAIL_FALLBACK_RETRY_SCHEDULE": ",".join(map(format_duration, SCHEDULE)),
            "TXMAIL_HTTP_HOST": "127.0.0.1",
            "TXMAIL_POSTBACK_TOKEN": TOKEN,
            "TXMAIL_API_TOKEN": TOKEN,
        }
        behind_proxy = {"TXMAIL_AMQP_URL": via_port(settings.amqp_url, broker.port)}
        ports = {name: free_port() for name in ("ingress", "worker", "executor", "api")}
        store = await open_store(postgres_url, DeliveryTimeouts(timedelta(hours=1)))
        stack.push_async_callback(store.close)
        running = Pipeline(env, tmp_path)
        stack.push_async_callback(stop_all, running)
        running.start("ingress", "ingress", TXMAIL_HTTP_PORT=str(ports["ingress"]))
        running.start("worker", "worker", TXMAIL_METRICS_PORT=str(ports["worker"]), **behind_proxy)
        running.start(
            "executor", "fallback", TXMAIL_METRICS_PORT=str(ports["executor"]), **behind_proxy
        )
        running.start("api", "api", TXMAIL_API_PORT=str(ports["api"]))
        for name, port in ports.items():
            check = ready(port)
            await wait_until(check, timeout=30, what=f"the {name} ready")
        yield Deployment(
            running,
            f"http://127.0.0.1:{ports['ingress']}",
            ports["worker"],
            ports["executor"],
            ports["api"],
            broker,
            database,
            hook,
            receiver,
            postgres_url,
            store,
        )


async def assert_nothing_lost_nothing_doubled(
    deployed: Deployment, settings: Settings, *loads: Load
) -> None:
    """After the processes stopped: no message left in the tracker, fallback or delay
    queues, no claim left open in the executor's call ledger, every accepted postback on
    its message's timeline and the message's outcome as Braze said, one call per bounce,
    none else."""
    topology = Topology(settings.namespace, tuple(SCHEDULE))
    fallback_queues = (topology.fallback_queue, *topology.fallback_delay_queues)
    # Every bounce called back is not yet the end: copies of a request may still be on
    # their way, each to be taken and acked without a call (invariant 3). A decision
    # whose publish was delivered but whose confirm was lost in the cut is published
    # again by the sweeper; a request acked too late is redelivered; a copy that found
    # the call in progress waits in a delay queue.
    await wait_until(
        drained(settings, fallback_queues), timeout=30, what="every copy of a request taken"
    )
    # The executor first, which finishes the copies it holds; then the worker, once it
    # has taken their attempt events. Gracefully: what one holds unacked goes back.
    await stop_all(deployed.running, "executor")
    await wait_until(
        drained(settings, [topology.tracker_queue]), what="the last attempt events taken"
    )
    await stop_all(deployed.running)
    every_queue = [topology.tracker_queue, *fallback_queues]
    assert await waiting_in(settings, every_queue) == dict.fromkeys(every_queue, 0)
    ledger = await asyncpg.connect(deployed.database_url)
    try:
        open_claims = await ledger.fetch("SELECT * FROM fallback_calls WHERE state = 'calling'")
    finally:
        await ledger.close()
    assert open_claims == []
    for load in loads:
        for key, expected in load.events.items():
            message = await deployed.store.find(external_send_id=key)
            assert message is not None, key
            assert expected <= {entry.event_id for entry in message.timeline}, key
            assert message.outcome == ("bounced" if key in load.bounced else "delivered")
    expected_calls = {(key, "bounced"): 1 for load in loads for key in load.bounced}
    assert dict(deployed.receiver.taken) == expected_calls


async def recovered(deployed: Deployment, settings: Settings, *loads: Load) -> None:
    """Once the fault is over: every process ready again by itself, all the work done,
    and nothing lost or doubled on the way."""
    for port in (deployed.worker_health, deployed.executor_health, deployed.api):
        await wait_until(ready(port), timeout=20, what="ready again")
    await wait_until(lambda: deployed.settled(*loads), timeout=40, what="everything applied")
    await assert_nothing_lost_nothing_doubled(deployed, settings, *loads)


@pytest.mark.timeout(120)
async def test_the_worker_and_the_executor_resume_after_their_broker_connections_are_cut(
    settings: Settings, postgres_schema_url: str, tmp_path: Path
) -> None:
    topology = Topology(settings.namespace)
    before, during = plan("before", 90, 1.5), plan("during", 90, 1.5)
    async with deployment(settings, postgres_schema_url, tmp_path) as deployed:
        await deployed.post(before)
        # Cut while the first load is still being worked through: deliveries and calls
        # in flight when the connections die are redelivered.
        posting = asyncio.ensure_future(deployed.post(during))
        await wait_until(lambda: len(deployed.receiver.taken) > 0, what="some calls made")
        await deployed.broker.cut()
        assert len(deployed.receiver.taken) < len(before.bounced | during.bounced), "mid-way"
        await not_ready_saying(
            {
                deployed.worker_health: f"not consuming {topology.tracker_queue}",
                deployed.executor_health: f"not consuming {topology.fallback_queue}",
            }
        )
        await posting  # the ingress has its own connection: it accepts all the while
        # The api reads the store, which is there: ready, and answering.
        assert (await readiness(deployed.api))[0] == 200
        called = next(iter(deployed.receiver.taken))[0]  # so its message is in the store
        status, message = await get(deployed.api, f"/v1/messages?external_send_id={called}")
        assert (status, message["outcome"]) == (200, "bounced")

        await deployed.broker.start()
        await recovered(deployed, settings, before, during)


@pytest.mark.timeout(120)
async def test_postgres_unreachable_stops_the_work_until_it_returns(
    settings: Settings, postgres_schema_url: str, tmp_path: Path
) -> None:
    before, during = plan("before", 90, 1.5), plan("during", 90, 1.5)
    async with deployment(settings, postgres_schema_url, tmp_path) as deployed:
        posting = asyncio.ensure_future(deployed.post(before))
        await wait_until(lambda: len(deployed.receiver.taken) > 0, what="some calls made")
        await deployed.database.cut()
        assert len(deployed.receiver.taken) < len(before.bounced | during.bounced), "mid-way"
        await posting
        await deployed.post(during)  # accepted: they wait on the queue
        await not_ready_saying(
            {
                deployed.worker_health: "store unavailable",
                deployed.executor_health: "call ledger unavailable",
                deployed.api: "store unavailable",
            }
        )
        status, answer = await get(deployed.api, "/v1/messages?external_send_id=before-0000")
        assert (status, answer["error"]) == (503, "store_unavailable")

        await deployed.database.start()
        await recovered(deployed, settings, before, during)


@pytest.mark.timeout(120)
async def test_a_webhook_down_longer_than_the_first_retries_is_called_once_when_back(
    settings: Settings, postgres_schema_url: str, tmp_path: Path
) -> None:
    load = plan("hook", 6, 0.1)  # two bounces
    async with deployment(settings, postgres_schema_url, tmp_path) as deployed:
        await deployed.hook.cut()  # connections refused: a receiver that is down
        await deployed.post(load)

        async def outcomes_all(minimum: int, outcome: str) -> bool:
            made = [await attempts(deployed.store, key) for key in load.bounced]
            return all([a["outcome"] for a in m].count(outcome) >= minimum for m in made)

        await wait_until(
            lambda: outcomes_all(2, "retrying"), timeout=20, what="two failed attempts each"
        )
        await deployed.hook.start()
        await wait_until(lambda: outcomes_all(1, "succeeded"), timeout=20, what="the calls")
        for key in load.bounced:
            made = await attempts(deployed.store, key)
            assert [a["outcome"] for a in made[:-1]] == ["retrying"] * (len(made) - 1)
            assert made[-1]["outcome"] == "succeeded"
            # Each retry waited its delay of the schedule (shortened by its jitter, at
            # most a fifth) after the attempt before it.
            for before, after in itertools.pairwise(made):
                waited = datetime.fromisoformat(after["at"]) - datetime.fromisoformat(before["at"])
                assert waited >= SCHEDULE[before["attempt"] - 1] * 0.8, (before, after)
        await assert_nothing_lost_nothing_doubled(deployed, settings, load)

"""A handler runs at most once per message (issue 12): copies of a request from the
workers' outbox, two executors running copies at once, an executor SIGKILLed
mid-chain, and a ledger database that is away. Real broker, databases and receivers."""

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path

import aio_pika
import pytest
from structlog.testing import capture_logs

from tests.support.broker_url import host_and_port, via_port
from tests.support.factories import postback
from tests.support.fallback import AttemptLog, a_request, publish
from tests.support.processes import environment, spawn
from tests.support.rules_file import rule
from tests.support.servers import Receiver
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.broker import Broker
from txmail.core.events import utc_now
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.fallback.configured import FallbackRules
from txmail.fallback.executor.chain import LEASE_MARGIN
from txmail.fallback.executor.service import running_executor
from txmail.workers.decisions import request_message
from txmail.workers.store import open_store
from txmail.workers.sweeper import Sweeper
from txmail.workers.timeouts import DeliveryTimeouts
from txmail.workers.watermark import WatermarkRule, WorkerProgress

WriteRules = Callable[..., FallbackRules]
HOOK = rule("ops-hook")
# Long enough, even shortened by the jitter, for a copy that finds the call busy to
# outlive the holder's lease (the webhook's 2s timeout + 5s).
LONG_SCHEDULE = [timedelta(seconds=2), timedelta(seconds=8)]


@pytest.fixture
async def once_settings(
    fallback_settings: Settings, database_url: str, amqp_url: str
) -> AsyncIterator[Settings]:
    yield fallback_settings.model_copy(
        update={"database_url": database_url, "fallback_retry_schedule": LONG_SCHEDULE}
    )
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        topology = Topology(fallback_settings.namespace, tuple(LONG_SCHEDULE))
        await topology.delete(await connection.channel())


def _succeeded(log: AttemptLog, handler: str) -> int:
    return log.outcomes(handler).count("succeeded")


async def test_a_request_published_twice_calls_the_handler_once(
    once_settings: Settings, receiver: Receiver, write_rules: WriteRules, attempt_log: AttemptLog
) -> None:
    rules = write_rules(HOOK)
    request = a_request()
    await publish(once_settings, request)
    await publish(once_settings, request)  # what the outbox does after a worker crash
    async with running_executor(once_settings, rules):
        await wait_until(lambda: _succeeded(attempt_log, "ops-hook") == 2, what="both copies")
    assert len(receiver.webhook.calls) == 1
    assert any("not called again" in a.detail for a in attempt_log.attempts)


async def test_two_executors_running_copies_at_once_call_the_handler_once(
    once_settings: Settings, receiver: Receiver, write_rules: WriteRules, attempt_log: AttemptLog
) -> None:
    rules = write_rules(HOOK)
    # One request at a time each: while one holds the first copy, the other takes the second.
    settings = once_settings.model_copy(update={"fallback_prefetch": 1})
    gate = asyncio.Event()
    receiver.webhook.hold_next = gate
    request = a_request()
    async with running_executor(settings, rules), running_executor(settings, rules):
        await publish(settings, request)
        await wait_until(lambda: receiver.webhook.hold_next is None, what="the first call")
        await publish(settings, request)
        await wait_until(
            lambda: any("is calling it now" in a.detail for a in attempt_log.attempts),
            what="the second copy finding the call busy",
        )
        gate.set()
        await wait_until(lambda: _succeeded(attempt_log, "ops-hook") == 2, what="both copies")
    assert len(receiver.webhook.calls) == 1


async def test_an_executor_killed_mid_chain_does_not_call_a_done_handler_again(
    once_settings: Settings,
    receiver: Receiver,
    tmp_path: Path,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(rule("sms", "ops-hook", mode="all"))
    gate = asyncio.Event()
    receiver.webhook.hold_next = gate
    await publish(once_settings, a_request())
    with (tmp_path / "executor.log").open("wb") as out:
        killed = await spawn(
            "fallback", env=environment(once_settings, rules.path), stdout=out, stderr=out
        )
    try:
        await wait_until(
            lambda: len(receiver.sms.calls) == 1 and receiver.webhook.hold_next is None,
            timeout=20,
            what="sms answered and the webhook call in progress",
        )
    finally:
        killed.kill()
        await killed.wait()
    gate.set()  # the killed call ends; its answer goes nowhere

    async with running_executor(once_settings, rules):
        await wait_until(
            lambda: _succeeded(attempt_log, "ops-hook") == 1, timeout=30, what="the webhook"
        )
    assert len(receiver.sms.calls) == 1
    # The webhook call the kill interrupted is the one that may be repeated.
    assert len(receiver.webhook.calls) == 2
    assert _succeeded(attempt_log, "sms") >= 1


class _CaughtUp:
    """A worker that has applied everything: this sweep is about the outbox only."""

    def progress(self, now: datetime) -> WorkerProgress:
        return WorkerProgress(
            "test", now, applied_until=now, event_time=None, heard_at=None, holding=None
        )


_WATERMARK = WatermarkRule(
    skew=timedelta(seconds=1),
    max_lateness=timedelta(seconds=1),
    sweep_interval=timedelta(seconds=1),
)


async def test_a_decision_the_sweeper_publishes_again_calls_the_handler_once(
    once_settings: Settings, receiver: Receiver, write_rules: WriteRules, attempt_log: AttemptLog
) -> None:
    rules = write_rules(HOOK)
    store = await open_store(
        once_settings.database_url, DeliveryTimeouts(timedelta(minutes=10)), timedelta(seconds=1)
    )
    broker = Broker(once_settings.amqp_url, Topology(once_settings.namespace), timedelta(seconds=5))
    broker.start()
    try:
        await wait_until(lambda: broker.is_ready, what="the broker")
        now = utc_now()
        decided = await store.apply([postback("d1", "bounced", now, reason="550 no user")], now)
        # The worker publishes, RabbitMQ confirms, and the worker dies before marking it.
        await broker.publish([request_message(p.request) for p in decided])
        sweeper = Sweeper(
            store, broker, timedelta(seconds=1), timedelta(days=30), _CaughtUp(), _WATERMARK
        )
        await sweeper.sweep(now + timedelta(seconds=2))
        assert (await store.counts()).unpublished == 0
        async with running_executor(once_settings, rules):
            await wait_until(lambda: _succeeded(attempt_log, "ops-hook") == 2, what="both copies")
    finally:
        await broker.close()
        await store.close()
    assert len(receiver.webhook.calls) == 1


async def test_no_handler_is_called_while_the_ledger_is_away(
    fallback_settings: Settings,
    postgres_schema_url: str,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(HOOK)
    proxy = TcpProxy(*host_and_port(postgres_schema_url))
    await proxy.start()
    settings = fallback_settings.model_copy(
        update={"database_url": via_port(postgres_schema_url, proxy.port)}
    )
    try:
        async with running_executor(settings, rules) as executor:
            assert executor is not None
            assert await executor.ledger_reachable()
            await proxy.cut()
            assert not await executor.ledger_reachable()
            with capture_logs() as logs:
                await publish(settings, a_request())
                await wait_until(
                    lambda: any("ledger unavailable" in e["event"] for e in logs),
                    what="the executor finding the ledger away",
                )
            assert receiver.webhook.calls == []
            await proxy.start()
            await wait_until(lambda: len(receiver.webhook.calls) == 1, what="the call")
            await wait_until(lambda: attempt_log.outcomes() == ["succeeded"], what="recorded")
    finally:
        await proxy.close()


async def test_a_success_the_ledger_cannot_record_is_kept_in_the_retry(
    fallback_settings: Settings,
    postgres_schema_url: str,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(rule("ops-hook", "sms", mode="all"))
    # The success is tried for the whole lease before the chain goes on to the sms.
    hook_lease = rules.handlers["ops-hook"].config.timeout + LEASE_MARGIN
    proxy = TcpProxy(*host_and_port(postgres_schema_url))
    await proxy.start()
    settings = fallback_settings.model_copy(
        update={"database_url": via_port(postgres_schema_url, proxy.port)}
    )
    gate = asyncio.Event()
    receiver.webhook.hold_next = gate
    try:
        async with running_executor(settings, rules):
            await publish(settings, a_request())
            await wait_until(lambda: receiver.webhook.hold_next is None, what="the webhook call")
            await proxy.cut()  # the database goes while the webhook is being called
            gate.set()

            def kept_for_the_retry() -> bool:
                # Per handler: one attempt's events are confirmed together but may be
                # published on different channels, so they arrive in either order.
                return attempt_log.outcomes("ops-hook") == ["succeeded"] and (
                    attempt_log.outcomes("sms") == ["retrying"]
                )

            await wait_until(
                kept_for_the_retry,
                timeout=hook_lease.total_seconds() + 10,
                what="the webhook's success kept, the sms left for the retry",
            )
            assert receiver.sms.calls == []
            await proxy.start()
            await wait_until(lambda: attempt_log.outcomes("sms") == ["retrying", "succeeded"])
    finally:
        await proxy.close()
    assert len(receiver.webhook.calls) == 1
    assert len(receiver.sms.calls) == 1

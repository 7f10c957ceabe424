"""The executor's broker connections drop: it consumes and publishes again by itself,
says it is not ready meanwhile, and runs the fallback that came in the meantime once."""

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
from structlog.testing import capture_logs

from tests.support.amqp import queue_depth
from tests.support.fallback import AttemptLog, a_request, publish, receiver_handlers
from tests.support.readiness import is_not_consuming, is_ready, proxied
from tests.support.rules_file import rule, write_rules_file
from tests.support.servers import Receiver
from tests.support.waiting import wait_until
from txmail.core.broker import Broker
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.fallback.configured import configure
from txmail.fallback.executor.service import (
    REQUEUE_PAUSE,
    FallbackExecutor,
    build_handlers,
    fallback_topology,
    running_executor,
)
from txmail.fallback.handler import HandlerResources
from txmail.fallback.ledger import open_ledger


async def test_the_executor_consumes_again_and_runs_the_fallback_once(
    fallback_settings: Settings, receiver: Receiver, attempt_log: AttemptLog, tmp_path: Path
) -> None:
    handlers = receiver_handlers(receiver)
    hook = rule("ops-hook", on=("bounced",))
    rules = configure(
        read_rules_file(write_rules_file(tmp_path / "rules.toml", hook, handlers=handlers))
    )
    async with proxied(fallback_settings) as (proxy, cut_off):
        async with running_executor(cut_off, rules) as executor:
            assert executor is not None
            await wait_until(lambda: is_ready(executor), what="the executor to be ready")
            await proxy.cut()
            await wait_until(
                lambda: is_not_consuming(executor), what="the executor to say it is not ready"
            )
            request = a_request()
            await publish(fallback_settings, request)
            await proxy.start()
            await wait_until(lambda: is_ready(executor), timeout=20, what="the executor back")
            await wait_until(lambda: len(receiver.webhook.accepted) == 1, what="the fallback")
            # Its outcome goes out on the publishing connection, which dropped too.
            await wait_until(
                lambda: attempt_log.outcomes("ops-hook") == ["succeeded"], what="the outcome"
            )
        assert receiver.webhook.keys == {f"{request.idempotency_key}:ops-hook"}
        assert len(receiver.webhook.calls) == 1


async def test_a_request_is_held_while_only_the_publishing_connection_is_down(
    fallback_settings: Settings, receiver: Receiver, attempt_log: AttemptLog, tmp_path: Path
) -> None:
    """The consumer and the publishing connection come back from an outage apart, each
    on its own backoff. A request taken in between is called, then held until its
    outcome can be published: requeued every second instead, it would be dead-lettered
    at the queue's delivery limit."""
    handlers = receiver_handlers(receiver)
    rules = configure(
        read_rules_file(
            write_rules_file(tmp_path / "rules.toml", rule("ops-hook"), handlers=handlers)
        )
    )
    topology = fallback_topology(fallback_settings)
    async with AsyncExitStack() as stack:
        proxy, cut_off = await stack.enter_async_context(proxied(fallback_settings))
        ledger = await open_ledger(fallback_settings.database_url)
        stack.push_async_callback(ledger.close)
        # Publishing through the proxy; consuming (the executor's settings) straight.
        broker = Broker(cut_off.amqp_url, topology, fallback_settings.publish_timeout)
        broker.start()
        stack.push_async_callback(broker.close)
        await broker.wait_ready()
        http = await stack.enter_async_context(aiohttp.ClientSession())
        ready = build_handlers(rules, HandlerResources(http, broker))
        executor = FallbackExecutor(fallback_settings, rules, ready, broker, ledger)
        await proxy.cut()
        await wait_until(lambda: not broker.is_ready, what="the publishing connection down")
        executor.start()
        stack.push_async_callback(executor.stop)
        with capture_logs() as logs:
            await publish(fallback_settings, a_request())
            await wait_until(
                lambda: any("holding the request" in e["event"] for e in logs),
                what="the request held",
            )
        await proxy.start()
        await wait_until(
            lambda: attempt_log.outcomes("ops-hook") == ["succeeded"],
            timeout=40,
            what="the outcome",
        )
    assert len(receiver.webhook.calls) == 1
    assert await queue_depth(fallback_settings.amqp_url, topology.dead_letter_queue) == 0


async def test_an_outcome_lost_with_its_connection_is_held_not_requeued_at_once(
    fallback_settings: Settings, receiver: Receiver, attempt_log: AttemptLog, tmp_path: Path
) -> None:
    """The publishing connection dies while the outcome's publish waits for its confirm.
    The publish fails before the connection is known to be down; the request must still
    be held until RabbitMQ takes publishes again, as in any outage, and not requeued at
    once: delivered again while publishing is still down, it would spend a second
    delivery of the queue's limit on the same outage."""
    handlers = receiver_handlers(receiver)
    rules = configure(
        read_rules_file(
            write_rules_file(tmp_path / "rules.toml", rule("ops-hook"), handlers=handlers)
        )
    )
    topology = fallback_topology(fallback_settings)
    async with AsyncExitStack() as stack:
        proxy, cut_off = await stack.enter_async_context(proxied(fallback_settings))
        ledger = await open_ledger(fallback_settings.database_url)
        stack.push_async_callback(ledger.close)
        # Publishing through the proxy; consuming (the executor's settings) straight.
        broker = Broker(cut_off.amqp_url, topology, fallback_settings.publish_timeout)
        broker.start()
        stack.push_async_callback(broker.close)
        await broker.wait_ready()
        http = await stack.enter_async_context(aiohttp.ClientSession())
        ready = build_handlers(rules, HandlerResources(http, broker))
        executor = FallbackExecutor(fallback_settings, rules, ready, broker, ledger)
        executor.start()
        stack.push_async_callback(executor.stop)
        with capture_logs() as logs:
            proxy.pause()  # the outcome's publish goes nowhere, and waits for its confirm
            await publish(fallback_settings, a_request())
            await wait_until(lambda: proxy.held > 0, what="the outcome's publish under way")
            await proxy.cut()
            await wait_until(
                lambda: any("not recorded" in e["event"] for e in logs), what="the failure"
            )
            # Longer than the executor waits before it requeues a request.
            await asyncio.sleep(REQUEUE_PAUSE * 3)
            proxy.resume()
            await proxy.start()
            await wait_until(
                lambda: attempt_log.outcomes("ops-hook") == ["succeeded"],
                timeout=40,
                what="the outcome",
            )
        failures = [e["event"] for e in logs if "not recorded" in e["event"]]
        assert len(failures) == 1, failures
        assert "holding the request" in failures[0]
    assert len(receiver.webhook.calls) == 1

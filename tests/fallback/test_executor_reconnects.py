"""The executor's broker connections drop: it consumes and publishes again by itself,
says it is not ready meanwhile, and runs the fallback that came in the meantime once."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
from structlog.testing import capture_logs

from tests.support.amqp import queue_depth
from tests.support.fallback import AttemptLog, a_request, publish, receiver_handlers
from tests.support.readiness import is_not_consuming, is_ready, proxied
from tests.support.rules_file import rule, write_rules_file
from tests.support.servers import Receiver
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.broker import Broker
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.fallback.configured import configure
from txmail.fallback.executor.service import (
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


@asynccontextmanager
async def publishing_through_a_proxy(
    settings: Settings, receiver: Receiver, tmp_path: Path
) -> AsyncIterator[tuple[TcpProxy, Broker, FallbackExecutor]]:
    """An executor with a webhook rule that consumes straight from RabbitMQ and publishes
    through a proxy the test can cut; not started."""
    handlers = receiver_handlers(receiver)
    rules = configure(
        read_rules_file(
            write_rules_file(tmp_path / "rules.toml", rule("ops-hook"), handlers=handlers)
        )
    )
    async with AsyncExitStack() as stack:
        proxy, cut_off = await stack.enter_async_context(proxied(settings))
        ledger = await open_ledger(settings.database_url)
        stack.push_async_callback(ledger.close)
        broker = Broker(cut_off.amqp_url, fallback_topology(settings), settings.publish_timeout)
        broker.start()
        stack.push_async_callback(broker.close)
        await broker.wait_ready()
        http = await stack.enter_async_context(aiohttp.ClientSession())
        ready = build_handlers(rules, HandlerResources(http, broker))
        executor = FallbackExecutor(settings, rules, ready, broker, ledger)
        stack.push_async_callback(executor.stop)
        yield proxy, broker, executor


async def test_a_request_is_held_while_only_the_publishing_connection_is_down(
    fallback_settings: Settings, receiver: Receiver, attempt_log: AttemptLog, tmp_path: Path
) -> None:
    """The consumer and the publishing connection come back from an outage apart, each
    on its own backoff. A request taken in between is called, then held until its
    outcome can be published: requeued every second instead, it would be dead-lettered
    at the queue's delivery limit."""
    async with publishing_through_a_proxy(fallback_settings, receiver, tmp_path) as (
        proxy,
        broker,
        executor,
    ):
        await proxy.cut()
        await wait_until(lambda: not broker.is_ready, what="the publishing connection down")
        executor.start()
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
    dead_letters = fallback_topology(fallback_settings).dead_letter_queue
    assert await queue_depth(fallback_settings.amqp_url, dead_letters) == 0


async def test_an_outcome_lost_with_its_connection_is_held_not_requeued_at_once(
    fallback_settings: Settings, receiver: Receiver, attempt_log: AttemptLog, tmp_path: Path
) -> None:
    """The publishing connection dies while the outcome's publish waits for its confirm.
    The publish fails before the connection is known to be down; the request must still
    be held until RabbitMQ takes publishes again, as in any outage, and not requeued at
    once: delivered again while publishing is still down, it would spend a second
    delivery of the queue's limit on the same outage."""
    async with publishing_through_a_proxy(fallback_settings, receiver, tmp_path) as (
        proxy,
        _,
        executor,
    ):
        executor.start()
        with capture_logs() as logs:
            proxy.pause()  # the outcome's publish goes nowhere, and waits for its confirm
            await publish(fallback_settings, a_request())
            await wait_until(lambda: proxy.held > 0, what="the outcome's publish under way")
            await proxy.cut()
            # Requeued at once, the request would come back, fail again and be held.
            await wait_until(
                lambda: any("holding the request" in e["event"] for e in logs),
                what="the request held",
            )
            proxy.resume()
            await proxy.start()
            await wait_until(
                lambda: attempt_log.outcomes("ops-hook") == ["succeeded"],
                timeout=40,
                what="the outcome",
            )
        failures = [e["event"] for e in logs if "not recorded" in e["event"]]
        assert len(failures) == 1, failures
    assert len(receiver.webhook.calls) == 1

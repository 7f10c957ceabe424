"""The executor against real RabbitMQ and real receivers: retries, parking, replay."""

import asyncio
from datetime import timedelta

import aiohttp
from structlog.testing import capture_logs

from tests.support.amqp import queue_depth
from tests.support.broker_url import host_and_port, via_port
from tests.support.fallback import (
    ExecutorUnderTest,
    a_request,
    parked_requests,
    publish,
    publish_raw,
)
from tests.support.harness import publisher
from tests.support.rules_file import rule
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.settings import Settings
from txmail.fallback.executor.service import (
    FallbackExecutor,
    build_handlers,
    fallback_topology,
)
from txmail.fallback.handler import HandlerResources
from txmail.fallback.ledger import open_ledger
from txmail.fallback.parking.entries import list_parked, replay_parked


async def test_a_receiver_that_fails_at_first_gets_the_fallback_once_it_recovers(
    executor: ExecutorUnderTest,
) -> None:
    executor.webhook.answers.extend([503, 429])
    request = a_request()
    async with executor.running(rule("ops-hook", on=("bounced",))):
        await executor.publish(request)
        await wait_until(lambda: len(executor.attempt_log.attempts) == 3, what="three attempts")

    assert [c.status for c in executor.webhook.calls] == [503, 429, 200]
    assert executor.webhook.keys == {f"{request.idempotency_key}:ops-hook"}
    assert len(executor.webhook.accepted) == 1
    assert executor.webhook.accepted[0].body["data"]["external_send_id"] == "order-1234"
    assert executor.attempt_log.outcomes() == ["retrying", "retrying", "succeeded"]
    assert [a.attempt for a in executor.attempt_log.attempts] == [1, 2, 3]
    assert "503" in executor.attempt_log.attempts[0].detail
    assert await executor.parked() == []


async def test_a_refusing_receiver_parks_the_request_and_a_replay_delivers_it_once(
    executor: ExecutorUnderTest,
) -> None:
    executor.webhook.default = 400
    request = a_request()
    async with executor.running(rule("ops-hook")):
        await executor.publish(request)
        await wait_until(lambda: executor.attempt_log.outcomes() == ["parked"], what="parked")
        # Listing twice shows the same thing: listing takes nothing away.
        assert await executor.parked() == [request.idempotency_key]
        parking = fallback_topology(executor.settings).fallback_parking_queue

        async def given_back() -> bool:
            # A listing gives back what it read when its channel closes, and a quorum
            # queue counts it again a moment later.
            return await queue_depth(executor.settings.amqp_url, parking) == 1

        await wait_until(given_back, what="the listed request back in its queue")
        async with publisher(executor.settings) as broker:
            [listed] = await list_parked(broker, fallback_topology(executor.settings))
            assert "400" in listed.reason
            assert listed.trigger == "bounced"

            executor.webhook.default = 200
            await wait_until(given_back, what="the listed request back in its queue")
            replayed = await replay_parked(
                broker, fallback_topology(executor.settings), {request.idempotency_key}
            )
        assert [r.idempotency_key for r in replayed] == [request.idempotency_key]
        await wait_until(lambda: len(executor.webhook.accepted) == 1, what="delivery")
        await wait_until(lambda: executor.attempt_log.outcomes() == ["parked", "succeeded"])

    assert [c.status for c in executor.webhook.calls] == [400, 200]
    assert await executor.parked() == []


async def test_retries_run_out_then_the_request_is_parked_with_the_last_error(
    executor: ExecutorUnderTest,
) -> None:
    executor.webhook.default = 502
    with capture_logs() as logs:
        async with executor.running(rule("ops-hook", on=("bounced",))):
            await executor.publish(a_request())
            await wait_until(lambda: "parked" in executor.attempt_log.outcomes(), what="parked")
            [request] = await parked_requests(executor.settings)
    reason = request.reason
    assert executor.attempt_log.outcomes() == ["retrying", "retrying", "parked"]
    assert len(executor.webhook.calls) == 3
    assert reason.startswith("retries exhausted after 3 attempts")
    assert "502" in reason
    # Parking needs a person: a warning, with the reason, for alerts.
    [warning] = [e for e in logs if e["event"] == "fallback request parked"]
    assert (warning["log_level"], warning["reason"]) == ("warning", reason)


async def test_all_mode_does_not_repeat_a_handler_that_already_succeeded(
    executor: ExecutorUnderTest,
) -> None:
    executor.webhook.answers.append(500)
    request = a_request()
    async with executor.running(rule("sms", "ops-hook", on=("bounced",), mode="all")):
        await executor.publish(request)
        await wait_until(lambda: len(executor.webhook.accepted) == 1, what="webhook delivery")
        await wait_until(lambda: len(executor.attempt_log.attempts) == 3, what="three attempts")

    assert len(executor.sms.calls) == 1
    sms = executor.sms.calls[0]
    assert sms.idempotency_key == f"{request.idempotency_key}:sms"
    assert sms.body == {
        "To": "+15550001111",
        "From": "+15559990000",
        "Body": "Hi Jane, your order order-1234 mail bounced.",
    }
    assert executor.attempt_log.outcomes("sms") == ["succeeded"]
    assert executor.attempt_log.outcomes("ops-hook") == ["retrying", "succeeded"]


async def test_first_success_goes_on_to_the_next_handler_after_a_failure(
    executor: ExecutorUnderTest,
) -> None:
    executor.webhook.default = 404
    async with executor.running(rule("ops-hook", "sms", on=("bounced",))):
        await executor.publish(a_request())
        await wait_until(lambda: len(executor.attempt_log.attempts) == 2, what="two attempts")
    assert executor.attempt_log.outcomes("ops-hook") == ["failed"]
    assert executor.attempt_log.outcomes("sms") == ["succeeded"]
    assert await executor.parked() == []


async def test_no_matching_rule_is_recorded_and_nothing_runs(
    executor: ExecutorUnderTest,
) -> None:
    async with executor.running(rule("sms", on=("bounced",), campaigns=["other"])):
        await executor.publish(a_request())
        await wait_until(lambda: executor.attempt_log.outcomes() == ["no_rule"], what="no_rule")
    assert executor.attempt_log.attempts[0].handler is None
    assert executor.sms.calls == []


async def test_an_unreadable_request_is_parked_and_the_executor_goes_on(
    executor: ExecutorUnderTest,
) -> None:
    async with executor.running(rule("sms")):
        await publish_raw(executor.settings, b'{"trigger": "bounced"', "fallback.request.bounced")
        await executor.publish(a_request())
        await wait_until(lambda: len(executor.sms.accepted) == 1, what="the good request")
        await wait_until(lambda: _parked_count_is(executor.settings, 1), what="bad one parked")
    [bad] = await parked_requests(executor.settings)
    assert bad.reason.startswith("not a valid fallback request")


async def _parked_count_is(settings: Settings, count: int) -> bool:
    return len(await parked_requests(settings)) == count


async def test_an_open_circuit_stops_calling_a_failing_handler(
    executor: ExecutorUnderTest,
) -> None:
    failures_to_open = 2
    settings = executor.settings.model_copy(
        update={
            "fallback_retry_schedule": [timedelta(milliseconds=200)] * 4,
            "fallback_circuit_failures": failures_to_open,
            "fallback_circuit_open_for": timedelta(minutes=1),
        }
    )
    executor.sms.default = 503
    async with executor.running(rule("sms"), settings=settings):
        await publish(settings, a_request())
        await wait_until(lambda: "parked" in executor.attempt_log.outcomes(), what="parked")
    assert len(executor.sms.calls) == failures_to_open
    assert len(executor.attempt_log.attempts) == 5
    assert all("circuit open" in a.detail for a in executor.attempt_log.attempts[failures_to_open:])


async def test_a_connection_lost_before_the_ack_does_not_call_the_handler_again(
    executor: ExecutorUnderTest,
) -> None:
    gate = asyncio.Event()
    executor.webhook.hold_next = gate
    request = a_request()
    proxy = TcpProxy(*host_and_port(executor.settings.amqp_url))
    await proxy.start()
    through_proxy = executor.settings.model_copy(
        update={"amqp_url": via_port(executor.settings.amqp_url, proxy.port)}
    )
    try:
        async with executor.running(rule("ops-hook"), settings=through_proxy):
            await executor.publish(request)
            await wait_until(lambda: executor.webhook.hold_next is None, what="the first call")
            proxy.drop_connections()  # the handler is running; its outcome cannot be recorded
            gate.set()
            # The redelivered request finds the success in the call ledger.
            await wait_until(
                lambda: executor.attempt_log.outcomes() == ["succeeded"], what="recorded"
            )
    finally:
        await proxy.close()

    assert len(executor.webhook.calls) == 1
    assert "not called again" in executor.attempt_log.attempts[0].detail
    assert await executor.parked() == []


async def test_the_executor_stops_while_the_broker_is_away(
    executor: ExecutorUnderTest,
) -> None:
    # What SIGTERM does to `txmail fallback` during a broker outage: it must not wait
    # for the broker to come back.
    rules = executor.rules(rule("sms"))
    proxy = TcpProxy(*host_and_port(executor.settings.amqp_url))
    await proxy.start()
    settings = executor.settings.model_copy(update={"publish_timeout": timedelta(seconds=1)})
    try:
        ledger = await open_ledger(settings.database_url)
        async with (
            publisher(
                settings.model_copy(update={"amqp_url": via_port(settings.amqp_url, proxy.port)})
            ) as broker,
            aiohttp.ClientSession() as http,
        ):
            handlers = build_handlers(rules, HandlerResources(http, broker))
            stopping = FallbackExecutor(settings, rules, handlers, broker, ledger)
            stopping.start()
            await proxy.cut()
            await wait_until(lambda: not broker.is_ready, what="the outage seen")
            await asyncio.wait_for(stopping.stop(), timeout=5)
            await asyncio.wait_for(broker.close(), timeout=5)
        await ledger.close()
    finally:
        await proxy.close()

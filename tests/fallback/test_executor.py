"""The executor against real RabbitMQ and real receivers: retries, parking, replay."""

import asyncio
from collections.abc import Callable
from datetime import timedelta

import aio_pika
import aiohttp
from structlog.testing import capture_logs

from tests.broker_url import host_and_port, via_port
from tests.fallback.conftest import AttemptLog
from tests.fallback.requests import (
    a_request,
    handlers_toml,
    parked,
    parked_requests,
    publish,
    publish_raw,
)
from tests.fallback.servers import Receiver
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_until
from txmail.core.settings import Settings
from txmail.fallback.configured import FallbackRules
from txmail.fallback.executor import (
    FallbackExecutor,
    build_handlers,
    fallback_topology,
    running_executor,
)
from txmail.fallback.handler import HandlerResources
from txmail.fallback.ledger import open_ledger
from txmail.fallback.parking import list_parked, replay_parked

WriteRules = Callable[[str], FallbackRules]


async def test_a_receiver_that_fails_at_first_gets_the_fallback_once_it_recovers(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(
        handlers_toml(receiver) + '[[rules]]\non = ["bounced"]\nhandlers = ["ops-hook"]\n'
    )
    receiver.webhook.answers.extend([503, 429])
    request = a_request()
    async with running_executor(fallback_settings, rules):
        await publish(fallback_settings, request)
        await wait_until(lambda: len(attempt_log.attempts) == 3, what="three attempts")

    assert [c.status for c in receiver.webhook.calls] == [503, 429, 200]
    assert receiver.webhook.keys == {f"{request.idempotency_key}:ops-hook"}
    assert len(receiver.webhook.accepted) == 1
    assert receiver.webhook.accepted[0].body["data"]["external_send_id"] == "order-1234"
    assert attempt_log.outcomes() == ["retrying", "retrying", "succeeded"]
    assert [a.attempt for a in attempt_log.attempts] == [1, 2, 3]
    assert "503" in attempt_log.attempts[0].detail
    assert await parked(fallback_settings) == []


async def test_a_refusing_receiver_parks_the_request_and_a_replay_delivers_it_once(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(
        handlers_toml(receiver) + '[[rules]]\non = ["*"]\nhandlers = ["ops-hook"]\n'
    )
    receiver.webhook.default = 400
    request = a_request()
    async with running_executor(fallback_settings, rules):
        await publish(fallback_settings, request)
        await wait_until(lambda: attempt_log.outcomes() == ["parked"], what="parked")
        # Listing twice shows the same thing: listing takes nothing away.
        assert await parked(fallback_settings) == [request.idempotency_key]
        connection = await aio_pika.connect_robust(fallback_settings.amqp_url)
        async with connection:
            [listed] = await list_parked(connection, fallback_topology(fallback_settings))
            assert "400" in listed.reason
            assert listed.trigger == "bounced"

            receiver.webhook.default = 200
            replayed = await replay_parked(
                connection, fallback_topology(fallback_settings), {request.idempotency_key}
            )
        assert [r.idempotency_key for r in replayed] == [request.idempotency_key]
        await wait_until(lambda: len(receiver.webhook.accepted) == 1, what="delivery")
        await wait_until(lambda: attempt_log.outcomes() == ["parked", "succeeded"])

    assert [c.status for c in receiver.webhook.calls] == [400, 200]
    assert await parked(fallback_settings) == []


async def test_retries_run_out_then_the_request_is_parked_with_the_last_error(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(
        handlers_toml(receiver) + '[[rules]]\non = ["bounced"]\nhandlers = ["ops-hook"]\n'
    )
    receiver.webhook.default = 502
    with capture_logs() as logs:
        async with running_executor(fallback_settings, rules):
            await publish(fallback_settings, a_request())
            await wait_until(lambda: "parked" in attempt_log.outcomes(), what="parked")
            [request] = await parked_requests(fallback_settings)
    reason = request.reason
    assert attempt_log.outcomes() == ["retrying", "retrying", "parked"]
    assert len(receiver.webhook.calls) == 3
    assert reason.startswith("retries exhausted after 3 attempts")
    assert "502" in reason
    # Parking needs a person: a warning, with the reason, for alerts.
    [warning] = [e for e in logs if e["event"] == "fallback request parked"]
    assert (warning["log_level"], warning["reason"]) == ("warning", reason)


async def test_all_mode_does_not_repeat_a_handler_that_already_succeeded(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(
        handlers_toml(receiver)
        + '[[rules]]\non = ["bounced"]\nhandlers = ["sms", "ops-hook"]\nmode = "all"\n'
    )
    receiver.webhook.answers.append(500)
    request = a_request()
    async with running_executor(fallback_settings, rules):
        await publish(fallback_settings, request)
        await wait_until(lambda: len(receiver.webhook.accepted) == 1, what="webhook delivery")
        await wait_until(lambda: len(attempt_log.attempts) == 3, what="three attempts")

    assert len(receiver.sms.calls) == 1
    sms = receiver.sms.calls[0]
    assert sms.idempotency_key == f"{request.idempotency_key}:sms"
    assert sms.body == {
        "To": "+15550001111",
        "From": "+15559990000",
        "Body": "Hi Jane, your order order-1234 mail bounced.",
    }
    assert attempt_log.outcomes("sms") == ["succeeded"]
    assert attempt_log.outcomes("ops-hook") == ["retrying", "succeeded"]


async def test_first_success_goes_on_to_the_next_handler_after_a_failure(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(
        handlers_toml(receiver) + '[[rules]]\non = ["bounced"]\nhandlers = ["ops-hook", "sms"]\n'
    )
    receiver.webhook.default = 404
    async with running_executor(fallback_settings, rules):
        await publish(fallback_settings, a_request())
        await wait_until(lambda: len(attempt_log.attempts) == 2, what="two attempts")
    assert attempt_log.outcomes("ops-hook") == ["failed"]
    assert attempt_log.outcomes("sms") == ["succeeded"]
    assert await parked(fallback_settings) == []


async def test_no_matching_rule_is_recorded_and_nothing_runs(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(
        handlers_toml(receiver)
        + '[[rules]]\non = ["bounced"]\ncampaigns = ["other"]\nhandlers = ["sms"]\n'
    )
    async with running_executor(fallback_settings, rules):
        await publish(fallback_settings, a_request())
        await wait_until(lambda: attempt_log.outcomes() == ["no_rule"], what="no_rule")
    assert attempt_log.attempts[0].handler is None
    assert receiver.sms.calls == []


async def test_an_unreadable_request_is_parked_and_the_executor_goes_on(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(handlers_toml(receiver) + '[[rules]]\non = ["*"]\nhandlers = ["sms"]\n')
    async with running_executor(fallback_settings, rules):
        await publish_raw(fallback_settings, b'{"trigger": "bounced"', "fallback.request.bounced")
        await publish(fallback_settings, a_request())
        await wait_until(lambda: len(receiver.sms.accepted) == 1, what="the good request")
        await wait_until(lambda: _parked_count_is(fallback_settings, 1), what="bad one parked")
    [bad] = await parked_requests(fallback_settings)
    assert bad.reason.startswith("not a valid fallback request")


async def _parked_count_is(settings: Settings, count: int) -> bool:
    return len(await parked_requests(settings)) == count


async def test_an_open_circuit_stops_calling_a_failing_handler(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    failures_to_open = 2
    settings = fallback_settings.model_copy(
        update={
            "fallback_retry_schedule": [timedelta(milliseconds=200)] * 4,
            "fallback_circuit_failures": failures_to_open,
            "fallback_circuit_open_for": timedelta(minutes=1),
        }
    )
    rules = write_rules(handlers_toml(receiver) + '[[rules]]\non = ["*"]\nhandlers = ["sms"]\n')
    receiver.sms.default = 503
    async with running_executor(settings, rules):
        await publish(settings, a_request())
        await wait_until(lambda: "parked" in attempt_log.outcomes(), what="parked")
    assert len(receiver.sms.calls) == failures_to_open
    assert len(attempt_log.attempts) == 5
    assert all("circuit open" in a.detail for a in attempt_log.attempts[failures_to_open:])


async def test_a_connection_lost_before_the_ack_does_not_call_the_handler_again(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: WriteRules,
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(
        handlers_toml(receiver) + '[[rules]]\non = ["*"]\nhandlers = ["ops-hook"]\n'
    )
    gate = asyncio.Event()
    receiver.webhook.hold_next = gate
    request = a_request()
    proxy = TcpProxy(*host_and_port(fallback_settings.amqp_url))
    await proxy.start()
    through_proxy = fallback_settings.model_copy(
        update={"amqp_url": via_port(fallback_settings.amqp_url, proxy.port)}
    )
    try:
        async with running_executor(through_proxy, rules):
            await publish(fallback_settings, request)
            await wait_until(lambda: receiver.webhook.hold_next is None, what="the first call")
            proxy.drop_connections()  # the handler is running; its outcome cannot be recorded
            gate.set()
            # The redelivered request finds the success in the call ledger.
            await wait_until(lambda: attempt_log.outcomes() == ["succeeded"], what="recorded")
    finally:
        await proxy.close()

    assert len(receiver.webhook.calls) == 1
    assert "not called again" in attempt_log.attempts[0].detail
    assert await parked(fallback_settings) == []


async def test_the_executor_stops_while_the_broker_is_away(
    fallback_settings: Settings, receiver: Receiver, write_rules: WriteRules
) -> None:
    # What SIGTERM does to `txmail fallback` during a broker outage: it must not wait
    # for the broker to come back.
    rules = write_rules(handlers_toml(receiver) + '[[rules]]\non = ["*"]\nhandlers = ["sms"]\n')
    proxy = TcpProxy(*host_and_port(fallback_settings.amqp_url))
    await proxy.start()
    settings = fallback_settings.model_copy(update={"publish_timeout": timedelta(seconds=1)})
    try:
        connection = await aio_pika.connect_robust(via_port(settings.amqp_url, proxy.port))
        ledger = await open_ledger(settings.database_url)
        async with aiohttp.ClientSession() as http:
            handlers = build_handlers(rules, HandlerResources(http, connection))
            executor = FallbackExecutor(settings, rules, handlers, connection, ledger)
            await executor.start()
            await proxy.cut()
            await wait_until(lambda: not connection.connected.is_set(), what="the outage seen")
            await asyncio.wait_for(executor.stop(), timeout=5)
            await asyncio.wait_for(connection.close(), timeout=5)
        await ledger.close()
    finally:
        await proxy.close()

"""Each built-in handler against a real server: what it sends, and how it reads answers."""

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from pydantic import ValidationError

from tests.support.broker_url import host_and_port, via_port
from tests.support.harness import publisher
from tests.support.ports import free_port
from tests.support.servers import (
    SMS_SID,
    SMS_TOKEN,
    SMTP_PASSWORD,
    SMTP_USER,
    WEBHOOK_SECRET,
    MailCollector,
    Receiver,
)
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.broker import Broker
from txmail.core.events import FallbackRequest, Recipient, Trigger
from txmail.core.settings import Settings
from txmail.fallback.executor.chain import ReadyHandler, run_handler
from txmail.fallback.handler import (
    FallbackHandler,
    HandlerResources,
    PermanentFailure,
    TransientFailure,
    UnusableRequest,
)
from txmail.fallback.handlers.amqp import AmqpConfig, AmqpHandler
from txmail.fallback.handlers.log import LogConfig, LogHandler
from txmail.fallback.handlers.sms import SmsConfig, SmsHandler
from txmail.fallback.handlers.smtp import SmtpConfig, SmtpHandler
from txmail.fallback.handlers.webhook import WebhookConfig, WebhookHandler, sign
from txmail.fallback.policy.circuit import Circuits, CircuitState
from txmail.fallback.policy.verdict import ResultKind


def a_request(**changes: Any) -> FallbackRequest:
    fields: dict[str, Any] = {
        "idempotency_key": "msg-1",
        "trigger": Trigger.ABORTED,
        "dispatch_id": "d-1",
        "external_send_id": "order-77",
        "campaign_api_id": "c-1",
        "reason": "User not emailable",
        "recipient": Recipient(email="jane@example.com", phone="+15550001111"),
        "variables": {"first_name": "Jane"},
        "decided_at": datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
    }
    return FallbackRequest.model_validate({**fields, **changes})


def test_every_built_in_is_a_fallback_handler(http_resources: HandlerResources) -> None:
    assert isinstance(LogHandler("log", LogConfig(), http_resources), FallbackHandler)


def test_the_signature_is_the_standard_webhooks_one() -> None:
    # The example from the Standard Webhooks specification's reference implementation.
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


async def test_webhook_sends_the_same_id_on_every_call(
    receiver: Receiver, http_resources: HandlerResources
) -> None:
    config = WebhookConfig.model_validate({"url": f"{receiver.url}/hook", "secret": WEBHOOK_SECRET})
    handler = WebhookHandler("ops-hook", config, http_resources)
    receiver.webhook.answers.append(500)
    with pytest.raises(TransientFailure, match="500"):
        await handler.send(a_request(), "msg-1:ops-hook")
    await handler.send(a_request(), "msg-1:ops-hook")
    assert receiver.webhook.keys == {"msg-1:ops-hook"}
    assert receiver.webhook.calls[0].body == receiver.webhook.calls[1].body
    assert receiver.webhook.calls[1].body["data"]["reason"] == "User not emailable"
    assert receiver.webhook.calls[0].user_agent == "txmail/" + version("txmail")


async def test_webhook_to_nowhere_is_transient_and_says_so_in_words(
    http_resources: HandlerResources,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    config = WebhookConfig.model_validate({"url": url, "secret": WEBHOOK_SECRET})
    with pytest.raises(TransientFailure) as failure:
        await WebhookHandler("h", config, http_resources).send(a_request(), "k")
    port = url.split(":")[2].split("/")[0]
    assert str(failure.value) == (
        f"POST {url} failed: cannot connect to 127.0.0.1:{port}: Connection refused"
    )


async def test_failure_details_are_words_not_reprs(
    receiver: Receiver, http_resources: HandlerResources
) -> None:
    config = WebhookConfig.model_validate({"url": f"{receiver.url}/hook", "secret": WEBHOOK_SECRET})
    ready = ReadyHandler(
        "hook", WebhookHandler("hook", config, http_resources), timedelta(seconds=2)
    )
    circuits = Circuits(failures_to_open=5, open_for=timedelta(minutes=1))
    receiver.webhook.answers.append(503)
    answered = await run_handler(ready, a_request(), circuits)
    assert answered.detail == (
        f'POST {receiver.url}/hook answered 503 Service Unavailable: {{"status": 503}}'
    )
    receiver.webhook.answers.append(502)
    receiver.webhook.answer_text = "<html>\n  <h1>Bad gateway</h1>\n" + "x" * 300
    quoted = (await run_handler(ready, a_request(), circuits)).detail.split(": ", 1)[1]
    assert quoted == "<html> <h1>Bad gateway</h1> " + "x" * 172 + "..."
    receiver.webhook.hold_next = gate = asyncio.Event()
    slow = ReadyHandler("hook", ready.handler, timedelta(milliseconds=200))
    assert (await run_handler(slow, a_request(), circuits)).detail == "timed out after 200ms"
    gate.set()


def sms_handler(receiver: Receiver, http_resources: HandlerResources, **changes: Any) -> SmsHandler:
    table = {
        "base_url": receiver.url,
        "account_sid": SMS_SID,
        "auth_token": SMS_TOKEN,
        "from": "+15559990000",
        "body": "Hi ${first_name}: $$5 off, order $external_send_id ($trigger)",
        **changes,
    }
    return SmsHandler("sms", SmsConfig.model_validate(table), http_resources)


async def test_sms_posts_twilio_form_fields_with_basic_auth(
    receiver: Receiver, http_resources: HandlerResources
) -> None:
    await sms_handler(receiver, http_resources).send(a_request(), "msg-1:sms")
    [call] = receiver.sms.calls
    assert call.idempotency_key == "msg-1:sms"
    assert call.user_agent == "txmail/" + version("txmail")
    assert call.body == {
        "To": "+15550001111",
        "From": "+15559990000",
        "Body": "Hi Jane: $5 off, order order-77 (aborted)",
    }


@pytest.mark.parametrize(
    ("status", "failure"),
    [(429, TransientFailure), (503, TransientFailure), (400, PermanentFailure)],
)
async def test_sms_answers_are_classified(
    receiver: Receiver, http_resources: HandlerResources, status: int, failure: type[Exception]
) -> None:
    receiver.sms.answers.append(status)
    with pytest.raises(failure, match=str(status)):
        await sms_handler(receiver, http_resources).send(a_request(), "k")


async def test_a_request_no_template_fits_does_not_stand_in_for_the_circuit_probe(
    receiver: Receiver, http_resources: HandlerResources
) -> None:
    # The provider was down, the circuit is half-open: a request whose template cannot
    # be filled never reaches the provider, so it must not close the circuit unprobed.
    handler = sms_handler(receiver, http_resources)
    ready = ReadyHandler("sms", handler, timedelta(seconds=2))
    circuits = Circuits(failures_to_open=1, open_for=timedelta(milliseconds=50))
    receiver.sms.answers.append(503)
    assert (await run_handler(ready, a_request(), circuits)).kind is ResultKind.TRANSIENT

    def state() -> CircuitState:
        return circuits["sms"].state

    await wait_until(lambda: state() is CircuitState.HALF_OPEN, what="half-open")
    no_phone = a_request(recipient=Recipient(email="jane@example.com"))
    assert (await run_handler(ready, no_phone, circuits)).kind is ResultKind.PERMANENT
    assert state() is CircuitState.HALF_OPEN
    assert (await run_handler(ready, a_request(), circuits)).kind is ResultKind.SUCCEEDED
    assert state() is CircuitState.CLOSED
    assert [c.status for c in receiver.sms.calls] == [503, 200]


@pytest.mark.parametrize(
    ("changes", "variables", "complaint"),
    [
        ({"to": "$pager"}, {"pager": ""}, "not a number to text"),
        ({"to": "$pager"}, {"pager": "+1555 000\n1111"}, "not a number to text"),
        ({"to": "$pager"}, {"pager": "+15550001111\x1b[2J"}, "not a number to text"),
        ({"body": "$note"}, {"note": " "}, "empty message"),
    ],
)
async def test_an_sms_no_provider_could_send_fails_the_request_not_the_circuit(
    receiver: Receiver,
    http_resources: HandlerResources,
    changes: dict[str, str],
    variables: dict[str, str],
    complaint: str,
) -> None:
    # Half-open: the provider's 400 to such a request would close the circuit unprobed.
    ready = ReadyHandler(
        "sms", sms_handler(receiver, http_resources, **changes), timedelta(seconds=2)
    )
    circuits = Circuits(failures_to_open=1, open_for=timedelta(0))
    circuits["sms"].record_failure("answered 503")
    assert circuits["sms"].state is CircuitState.HALF_OPEN
    result = await run_handler(ready, a_request(variables=variables), circuits)
    assert result.kind is ResultKind.PERMANENT
    assert complaint in result.detail
    assert circuits["sms"].state is CircuitState.HALF_OPEN
    assert receiver.sms.calls == []


async def test_sms_with_wrong_credentials_is_permanent(
    receiver: Receiver, http_resources: HandlerResources
) -> None:
    handler = sms_handler(receiver, http_resources, auth_token="wrong")
    with pytest.raises(PermanentFailure, match="401"):
        await handler.send(a_request(), "k")


async def test_a_template_variable_the_request_lacks_is_permanent(
    receiver: Receiver, http_resources: HandlerResources
) -> None:
    handler = sms_handler(receiver, http_resources)
    with pytest.raises(PermanentFailure, match=r"template 'to' uses \$recipient_phone"):
        await handler.send(a_request(recipient=Recipient(email="jane@example.com")), "k")
    assert receiver.sms.calls == []


async def test_a_registered_variable_cannot_stand_in_for_a_name_the_request_lacks(
    receiver: Receiver, http_resources: HandlerResources
) -> None:
    # Registered without a phone: `$recipient_phone` must fail, not take a variable's value.
    request = a_request(
        recipient=Recipient(email="jane@example.com"),
        variables={"first_name": "Jane", "recipient_phone": "+15556660000"},
    )
    with pytest.raises(PermanentFailure, match=r"template 'to' uses \$recipient_phone"):
        await sms_handler(receiver, http_resources).send(request, "k")
    assert receiver.sms.calls == []


async def test_smtp_sends_through_the_relay_with_a_stable_message_id(
    smtp_server: tuple[MailCollector, int], http_resources: HandlerResources
) -> None:
    collector, port = smtp_server
    config = SmtpConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "starttls": False,
            "from": "fallback@shop.example",
            "subject": "Your order $external_send_id",
            "body": "Hello $first_name,\nwe could not email you ($reason).",
        }
    )
    handler = SmtpHandler("mailer", config, http_resources)
    await handler.send(a_request(), "msg-1:mailer")
    await handler.send(a_request(), "msg-1:mailer")
    first, second = collector.mails
    assert collector.envelope_recipients == [["jane@example.com"], ["jane@example.com"]]
    assert first["Subject"] == "Your order order-77"
    assert first["From"] == "fallback@shop.example"
    assert "we could not email you (User not emailable)." in first.get_payload()
    assert first["Message-ID"] == second["Message-ID"]
    assert first["Message-ID"].endswith("@shop.example>")
    assert first["X-Mailer"] == "txmail/" + version("txmail")


async def test_smtp_header_that_cannot_be_written_is_permanent(
    smtp_server: tuple[MailCollector, int], http_resources: HandlerResources
) -> None:
    # A registered variable with a line break cannot go into a header: no retry fixes it.
    collector, port = smtp_server
    config = SmtpConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "starttls": False,
            "from": "fallback@shop.example",
            "subject": "For $first_name",
            "body": "Hello",
        }
    )
    request = a_request(variables={"first_name": "Jane\r\nBcc: someone@example.com"})
    with pytest.raises(PermanentFailure, match="'subject'"):
        await SmtpHandler("mailer", config, http_resources).send(request, "msg-1:mailer")
    assert collector.mails == []


@pytest.mark.parametrize(
    "to", ["postmaster,ada@example.com", "ada@example.com bob@example.com", "ada", "list:;"]
)
async def test_smtp_sends_to_exactly_one_address(
    smtp_server: tuple[MailCollector, int], http_resources: HandlerResources, to: str
) -> None:
    # The rules file's `to` template can still make several recipients of one.
    collector, port = smtp_server
    config = SmtpConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "starttls": False,
            "from": "fallback@shop.example",
            "to": "$contact",
            "subject": "s",
            "body": "b",
        }
    )
    handler = SmtpHandler("mailer", config, http_resources)
    with pytest.raises(UnusableRequest, match="not exactly one mail address"):
        await handler.send(a_request(variables={"contact": to}), "k")
    await handler.send(a_request(variables={"contact": '"Lovelace, Ada" <ada@example.com>'}), "k")
    assert collector.envelope_recipients == [["ada@example.com"]]


async def test_smtp_refusals_are_told_in_words(
    smtp_server: tuple[MailCollector, int], http_resources: HandlerResources
) -> None:
    collector, port = smtp_server
    collector.unknown_recipients.add("jane@example.com")
    config = SmtpConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "starttls": False,
            "from": "a@b.example",
            "subject": "s",
            "body": "b",
        }
    )
    with pytest.raises(PermanentFailure) as failure:
        await SmtpHandler("mailer", config, http_resources).send(a_request(), "k")
    assert str(failure.value) == (
        f"127.0.0.1:{port} refused the recipient (jane@example.com: 550 5.1.1 no such user)"
    )


@pytest.mark.parametrize(("password", "delivered"), [(SMTP_PASSWORD, True), ("wrong", False)])
# The test relay has no certificate, so it takes a login without TLS, and says so.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_smtp_logs_in_when_configured(
    smtp_server_with_login: tuple[MailCollector, int],
    http_resources: HandlerResources,
    password: str,
    delivered: bool,
) -> None:
    collector, port = smtp_server_with_login
    table = {
        "host": "127.0.0.1",
        "port": port,
        "starttls": False,
        "username": SMTP_USER,
        "password": password,
        "from": "a@b.example",
        "subject": "s",
        "body": "b",
    }
    handler = SmtpHandler("mailer", SmtpConfig.model_validate(table), http_resources)
    if delivered:
        await handler.send(a_request(), "k")
        assert len(collector.mails) == 1
    else:
        with pytest.raises(PermanentFailure, match=r"answered 535 5\.7\.8 "):
            await handler.send(a_request(), "k")
        assert collector.mails == []


async def test_smtp_starttls_with_the_company_ca(
    smtp_server_with_starttls: tuple[MailCollector, int],
    relay_certificate: tuple[Path, Path],
    http_resources: HandlerResources,
) -> None:
    collector, port = smtp_server_with_starttls
    table = {
        "host": "127.0.0.1",
        "port": port,
        "from": "a@b.example",
        "subject": "s",
        "body": "b",
    }
    verified = SmtpConfig.model_validate({**table, "ca_file": str(relay_certificate[0])})
    await SmtpHandler("mailer", verified, http_resources).send(a_request(), "k")
    assert len(collector.mails) == 1

    without_tls = SmtpConfig.model_validate({**table, "starttls": False})
    with pytest.raises(PermanentFailure, match="530"):
        await SmtpHandler("mailer", without_tls, http_resources).send(a_request(), "k")
    unverified = SmtpConfig.model_validate(table)  # the system's CAs do not know it
    with pytest.raises(TransientFailure, match="CERTIFICATE_VERIFY_FAILED"):
        await SmtpHandler("mailer", unverified, http_resources).send(a_request(), "k")


async def test_smtp_relay_down_is_transient(http_resources: HandlerResources) -> None:
    config = SmtpConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": free_port(),
            "starttls": False,
            "from": "a@b.example",
            "subject": "s",
            "body": "b",
        }
    )
    with pytest.raises(TransientFailure, match=r"unreachable: Connection refused$"):
        await SmtpHandler("mailer", config, http_resources).send(a_request(), "k")


async def test_smtp_relay_without_starttls_is_permanent_when_starttls_is_required(
    smtp_server: tuple[MailCollector, int], http_resources: HandlerResources
) -> None:
    # `starttls = true` (the default) against a relay that does not offer it is a
    # configuration mistake: retrying for hours cannot fix it, and it is not "unreachable".
    collector, port = smtp_server
    config = SmtpConfig.model_validate(
        {"host": "127.0.0.1", "port": port, "from": "a@b.example", "subject": "s", "body": "b"}
    )
    with pytest.raises(PermanentFailure, match="check 'starttls'"):
        await SmtpHandler("mailer", config, http_resources).send(a_request(), "k")
    assert collector.mails == []


@pytest.fixture
async def bound_exchange(
    amqp_url: str, namespace: str
) -> AsyncIterator[tuple[str, aio_pika.abc.AbstractQueue]]:
    """An exchange and queue of 'another team', made and removed by the test."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            f"{namespace}.ops", aio_pika.ExchangeType.TOPIC, auto_delete=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "email.fallback.#")
        yield exchange.name, queue


async def test_amqp_publishes_a_persistent_message_keyed_by_idempotency_key(
    bound_exchange: tuple[str, aio_pika.abc.AbstractQueue], resources: HandlerResources
) -> None:
    name, queue = bound_exchange
    handler = AmqpHandler("bus", AmqpConfig(exchange=name), resources)
    await handler.send(a_request(), "msg-1:bus")
    message = await queue.get(timeout=5)
    assert message.message_id == "msg-1:bus"
    assert message.routing_key == "email.fallback.aborted"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert json.loads(message.body)["data"]["external_send_id"] == "order-77"


async def test_amqp_publishes_again_after_the_shared_connection_drops(
    bound_exchange: tuple[str, aio_pika.abc.AbstractQueue], settings: Settings
) -> None:
    """The executor's handlers share its broker connection: a drop must not end them."""
    name, queue = bound_exchange
    proxy = TcpProxy(*host_and_port(settings.amqp_url))
    await proxy.start()
    proxied = settings.model_copy(update={"amqp_url": via_port(settings.amqp_url, proxy.port)})
    try:
        async with publisher(proxied) as broker, aiohttp.ClientSession() as http:
            handler = AmqpHandler("bus", AmqpConfig(exchange=name), HandlerResources(http, broker))
            await handler.send(a_request(), "before")
            proxy.drop_connections()  # a broker restart: it listens again at once

            async def sent_again() -> bool:
                try:
                    await handler.send(a_request(), "after")
                except TransientFailure:
                    return False
                return True

            await wait_until(sent_again, timeout=20, what="a publish after the drop")
        ids = {(await queue.get(timeout=5)).message_id for _ in range(2)}
        assert ids == {"before", "after"}
    finally:
        await proxy.close()


async def test_amqp_without_a_bound_queue_is_transient(
    bound_exchange: tuple[str, aio_pika.abc.AbstractQueue], resources: HandlerResources
) -> None:
    name, _ = bound_exchange
    config = AmqpConfig.model_validate({"exchange": name, "routing_key": "nobody.listens"})
    with pytest.raises(TransientFailure, match="no queue bound"):
        await AmqpHandler("bus", config, resources).send(a_request(), "k")


async def test_amqp_to_a_missing_exchange_is_permanent_and_the_handler_recovers(
    bound_exchange: tuple[str, aio_pika.abc.AbstractQueue], resources: HandlerResources
) -> None:
    missing = AmqpHandler("bus", AmqpConfig(exchange=f"missing-{uuid.uuid4().hex}"), resources)
    with pytest.raises(PermanentFailure, match="does not exist"):
        await missing.send(a_request(), "k")
    # The closed channel was its own: the connection and other handlers are unharmed.
    name, queue = bound_exchange
    await AmqpHandler("bus", AmqpConfig(exchange=name), resources).send(a_request(), "k")
    assert (await queue.get(timeout=5)).message_id == "k"
    assert resources.amqp.is_ready


def channels_of(broker: Broker) -> dict[int, Any]:
    """The channels open on the broker's connection, live."""
    assert broker.connection is not None
    assert broker.connection.transport is not None
    return broker.connection.transport.connection.channels


async def test_amqp_to_a_missing_exchange_leaves_no_channel_open(
    resources: HandlerResources,
) -> None:
    # The connection is the executor's own: a misconfigured exchange failing request
    # after request must not pile up channels on it until the broker's limit.
    open_channels = channels_of(resources.amqp)
    before = len(open_channels)
    missing = AmqpHandler("bus", AmqpConfig(exchange=f"missing-{uuid.uuid4().hex}"), resources)
    for _ in range(5):
        with pytest.raises(PermanentFailure, match="does not exist"):
            await missing.send(a_request(), "k")
    await wait_until(lambda: len(open_channels) <= before, timeout=5, what="channels closed")


async def test_amqp_to_an_exchange_it_may_not_publish_on_is_permanent_and_leaves_no_channel(
    amqp_url: str, namespace: str, resources: HandlerResources
) -> None:
    # An internal exchange refuses publishers (403), as an exchange the user has no
    # permission on does: a configuration mistake, not worth hours of retries.
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        internal = await channel.declare_exchange(
            f"{namespace}.internal", aio_pika.ExchangeType.TOPIC, internal=True, auto_delete=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(internal, "#")
        open_channels = channels_of(resources.amqp)
        before = len(open_channels)
        handler = AmqpHandler("bus", AmqpConfig(exchange=internal.name), resources)
        for _ in range(3):
            with pytest.raises(PermanentFailure, match="refused"):
                await handler.send(a_request(), "k")
        await wait_until(lambda: len(open_channels) <= before, timeout=5, what="channels closed")


async def test_log_handler_only_logs(http_resources: HandlerResources) -> None:
    await LogHandler("dry-run", LogConfig(), http_resources).send(a_request(), "k")


async def test_amqp_routing_key_too_long_fails_the_request_not_the_circuit(
    bound_exchange: tuple[str, aio_pika.abc.AbstractQueue], resources: HandlerResources
) -> None:
    # A registered variable makes the routing key longer than AMQP allows: that request
    # is unusable, and bad registrations must not open the circuit for everyone else.
    name, queue = bound_exchange
    config = AmqpConfig.model_validate({"exchange": name, "routing_key": "email.fallback.$team"})
    ready = ReadyHandler("bus", AmqpHandler("bus", config, resources), timedelta(seconds=5))
    circuits = Circuits(failures_to_open=1, open_for=timedelta(minutes=1))
    too_long = a_request(variables={"team": "é" * 128})
    result = await run_handler(ready, too_long, circuits)
    assert result.kind is ResultKind.PERMANENT
    assert "more than AMQP's 255" in result.detail
    assert circuits["bus"].state is CircuitState.CLOSED
    assert (await run_handler(ready, a_request(variables={"team": "ops"}), circuits)).kind is (
        ResultKind.SUCCEEDED
    )
    assert (await queue.get(timeout=5)).routing_key == "email.fallback.ops"


def test_an_exchange_name_amqp_cannot_carry_is_refused_when_the_file_is_loaded() -> None:
    with pytest.raises(ValidationError, match="at most 255 bytes"):
        AmqpConfig(exchange="é" * 128)

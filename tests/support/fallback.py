"""What the executor tests share: tiny retry delays, a fallback request, handler tables
for the stand-in receiver, publishing requests as the workers do, parking one as the
executor does, reading the parking queue, and a log of the attempt events the executor
publishes."""

import json
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika

from tests.support.harness import publisher
from tests.support.rules_file import Table, write_rules_file
from tests.support.servers import SMS_SID, SMS_TOKEN, WEBHOOK_SECRET, Endpoint, Receiver
from txmail.core.broker import TO_QUEUE, Outgoing
from txmail.core.events import (
    FALLBACK_ATTEMPT_TYPE,
    FALLBACK_REQUEST_TYPE,
    FallbackAttempt,
    FallbackRequest,
    Recipient,
    Trigger,
)
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.fallback.configured import FallbackRules, configure
from txmail.fallback.executor.service import FallbackExecutor, fallback_topology, running_executor
from txmail.fallback.parking.entries import ParkedRequest, list_parked
from txmail.fallback.policy.progress import PARKED_AT, PARKED_REASON

RETRY_SCHEDULE = [timedelta(milliseconds=200), timedelta(milliseconds=500)]


def a_request(**changes: object) -> FallbackRequest:
    fields: dict[str, object] = {
        "idempotency_key": uuid.uuid4().hex,
        "trigger": Trigger.BOUNCED,
        "dispatch_id": "dispatch-1",
        "external_send_id": "order-1234",
        "campaign_api_id": "campaign-a",
        "reason": "550 5.1.1 no such user",
        "braze_timestamps": {"bounced_at": "2026-11-27T10:00:00+00:00"},
        "recipient": Recipient(email="jane@example.com", phone="+15550001111"),
        "variables": {"first_name": "Jane"},
        "decided_at": datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
    }
    return FallbackRequest.model_validate({**fields, **changes})


def receiver_handlers(receiver: Receiver) -> dict[str, dict[str, Any]]:
    """Handler tables calling the stand-in receiver: a webhook and a Twilio-shaped SMS."""
    return {
        "ops-hook": {
            "type": "webhook",
            "url": f"{receiver.url}/hook",
            "secret": WEBHOOK_SECRET,
            "timeout": "2s",
        },
        "sms": {
            "type": "sms",
            "base_url": receiver.url,
            "account_sid": SMS_SID,
            "auth_token": SMS_TOKEN,
            "from": "+15559990000",
            "body": "Hi $first_name, your order $external_send_id mail bounced.",
        },
    }


async def publish_raw(settings: Settings, body: bytes, routing_key: str) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await fallback_topology(settings).declare(channel)
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=uuid.uuid4().hex,
            type=FALLBACK_REQUEST_TYPE,
        )
        await exchange.publish(message, routing_key, mandatory=True)


async def publish(settings: Settings, request: FallbackRequest) -> None:
    await publish_raw(settings, request.model_dump_json().encode(), request.routing_key)


async def park(
    settings: Settings, request: FallbackRequest, reason: str = "ops-hook: permanent: answered 400"
) -> None:
    """``request`` in the parking queue, as the executor leaves one that failed for good."""
    parking_queue = fallback_topology(settings).fallback_parking_queue
    headers = {PARKED_REASON: reason, PARKED_AT: datetime.now(UTC).isoformat()}
    body = request.model_dump_json().encode()
    async with publisher(settings) as broker:
        await broker.publish(
            [
                Outgoing(
                    parking_queue,
                    body,
                    request.idempotency_key,
                    FALLBACK_REQUEST_TYPE,
                    headers=headers,
                    exchange=TO_QUEUE,
                )
            ]
        )


async def parked_requests(settings: Settings) -> list[ParkedRequest]:
    async with publisher(settings) as broker:
        return await list_parked(broker, fallback_topology(settings))


async def parked(settings: Settings) -> list[str]:
    return [p.idempotency_key or p.message_id for p in await parked_requests(settings)]


class AttemptLog:
    """Every FallbackAttempt published, read from the tracker queue (the workers' input)."""

    def __init__(self) -> None:
        self.attempts: list[FallbackAttempt] = []

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if message.type == FALLBACK_ATTEMPT_TYPE:
            self.attempts.append(FallbackAttempt.model_validate(json.loads(message.body)))
        await message.ack()

    def outcomes(self, handler: str | None = None) -> list[str]:
        return [a.outcome.value for a in self.attempts if handler is None or a.handler == handler]


@dataclass
class ExecutorUnderTest:
    """What an executor test works with: its settings, the stand-in receiver, the
    attempts the executor publishes, and a rules file calling the receiver."""

    settings: Settings
    receiver: Receiver
    attempt_log: AttemptLog
    rules_path: Path

    @property
    def webhook(self) -> Endpoint:
        return self.receiver.webhook

    @property
    def sms(self) -> Endpoint:
        return self.receiver.sms

    def rules(self, *rules: Table) -> FallbackRules:
        """The receiver's handlers and ``rules``, written and loaded (so checked)."""
        handlers = receiver_handlers(self.receiver)
        return configure(
            read_rules_file(write_rules_file(self.rules_path, *rules, handlers=handlers))
        )

    def running(
        self, *rules: Table, settings: Settings | None = None
    ) -> AbstractAsyncContextManager[FallbackExecutor | None]:
        """An executor with these rules (and these settings, if not the test's)."""
        return running_executor(settings or self.settings, self.rules(*rules))

    async def publish(self, request: FallbackRequest) -> None:
        await publish(self.settings, request)

    async def parked(self) -> list[str]:
        return await parked(self.settings)

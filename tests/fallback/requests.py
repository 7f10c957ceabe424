"""What the executor tests share: a fallback request, handler tables for the stand-in
receiver, publishing requests as the workers do, and reading the parking queue."""

import uuid
from datetime import UTC, datetime

import aio_pika

from tests.fallback.servers import SMS_SID, SMS_TOKEN, WEBHOOK_SECRET, Receiver
from tests.harness import publisher
from txmail.core.events import FALLBACK_REQUEST_TYPE, FallbackRequest, Recipient, Trigger
from txmail.core.settings import Settings
from txmail.fallback.executor.service import fallback_topology
from txmail.fallback.parking.entries import ParkedRequest, list_parked


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


def handlers_toml(receiver: Receiver) -> str:
    return f"""
[handlers.ops-hook]
type = "webhook"
url = "{receiver.url}/hook"
secret = "{WEBHOOK_SECRET}"
timeout = "2s"

[handlers.sms]
type = "sms"
base_url = "{receiver.url}"
account_sid = "{SMS_SID}"
auth_token = "{SMS_TOKEN}"
from = "+15559990000"
body = "Hi $first_name, your order $external_send_id mail bounced."
"""


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


async def parked_requests(settings: Settings) -> list[ParkedRequest]:
    async with publisher(settings) as broker:
        return await list_parked(broker, fallback_topology(settings))


async def parked(settings: Settings) -> list[str]:
    return [p.idempotency_key or p.message_id for p in await parked_requests(settings)]

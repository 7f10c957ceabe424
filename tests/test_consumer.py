"""The Consumer: resumed when the broker cancels it, deliveries read as aio-pika read
them, and settled once on the channel they came on."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from pamqp.common import FieldTable

from tests.support.waiting import wait_until
from txmail.core.consumer import Consumer, Received
from txmail.core.kept_connection import BROKER_ERRORS
from txmail.core.settings import Settings


async def test_a_consumer_cancelled_by_the_broker_consumes_again(settings: Settings) -> None:
    name = f"{settings.namespace}.consumer-test"
    received: list[bytes] = []

    async def declare(channel: AbstractChannel) -> AbstractQueue:
        return await channel.declare_queue(name, auto_delete=True)

    async def on_message(message: Received) -> None:
        received.append(message.body)
        await message.ack()

    consumer = Consumer(settings.amqp_url, name, 10, declare, on_message)
    consumer.start()
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        async with connection:
            channel = await connection.channel()
            await wait_until(lambda: consumer.is_consuming, what="consuming")
            await channel.queue_delete(name)
            await wait_until(lambda: consumer.times_up == 2, what="consuming again")
            await channel.default_exchange.publish(aio_pika.Message(b"after"), name)
            await wait_until(lambda: received == [b"after"], what="the message")
    finally:
        await asyncio.wait_for(consumer.close(), 5)


# Every kind of header value txmail reads or carries along: the ingress's received_at,
# the executor's x-txmail-* progress, a table, bytes; the broker adds x-death.
HEADERS: FieldTable = {
    "received_at": "2026-11-29T12:00:00.123456+00:00",
    "x-txmail-attempt": 2,
    "x-txmail-succeeded": ["sms", "webhook"],
    "x-txmail-parked-reason": "handler webhook: 500",
    "a-table": {"nested": [1, "two"]},
    "raw": bytearray(b"\x00\xff"),
    "at": datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
    "flag": True,
}


@asynccontextmanager
async def queues(settings: Settings, *names: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            yield channel
        finally:
            for name in names:
                await channel.queue_delete(name)


async def test_a_delivery_reads_as_aio_pika_read_it(settings: Settings) -> None:
    expired, name = f"{settings.namespace}.consumer-ttl", f"{settings.namespace}.consumer-dead"
    async with queues(settings, expired, name) as channel:
        await channel.declare_queue(name)
        # Dead-lettered at once, so that the broker adds its x-death header.
        ttl: FieldTable = {
            "x-message-ttl": 0,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": name,
        }
        await channel.declare_queue(expired, arguments=ttl)
        sent_at = datetime(2026, 11, 29, 12, 0, 1, tzinfo=UTC)
        message = aio_pika.Message(
            b'{"x": 1}',
            headers=HEADERS,
            message_id="m-1",
            type="postback",
            content_type="application/json",
            timestamp=sent_at,
        )
        await channel.default_exchange.publish(message, expired)

        received: list[Received] = []

        async def on_message(delivery: Received) -> None:
            received.append(delivery)
            if len(received) == 1:
                await delivery.nack(requeue=True)

        consumer = Consumer(settings.amqp_url, name, 10, channel_ready, on_message)
        consumer.start()
        try:
            await wait_until(lambda: len(received) == 2, what="the delivery, then again")
        finally:
            await asyncio.wait_for(consumer.close(), 5)

        first, again = received
        assert (first.redelivered, again.redelivered) == (False, True)
        assert again.delivery_tag != first.delivery_tag
        taken = await (await channel.get_queue(name)).get(no_ack=True)
        assert taken is not None
        assert first.body == taken.body == b'{"x": 1}'
        assert first.headers == taken.headers
        assert {k: first.headers[k] for k in HEADERS} == HEADERS
        assert first.headers["x-death"][0]["queue"] == expired
        assert first.headers["x-death"][0]["reason"] == "expired"
        read = (first.type, first.message_id, first.content_type, first.timestamp)
        assert read == (taken.type, taken.message_id, taken.content_type, taken.timestamp)
        assert read == ("postback", "m-1", "application/json", sent_at)
        assert first.routing_key == taken.routing_key == name


async def channel_ready(channel: AbstractChannel) -> None:
    """Prepare for a queue the test declared itself."""


async def test_deliveries_are_settled_once_and_the_unsettled_go_back(settings: Settings) -> None:
    name = f"{settings.namespace}.consumer-settle"
    async with queues(settings, name) as channel:
        queue = await channel.declare_queue(name)
        received: list[Received] = []

        async def on_message(delivery: Received) -> None:
            received.append(delivery)

        async def publish(*bodies: bytes) -> None:
            for body in bodies:
                await channel.default_exchange.publish(aio_pika.Message(body), name)

        consumer = Consumer(settings.amqp_url, name, 10, channel_ready, on_message)
        consumer.start()
        try:
            await publish(b"1", b"2", b"3", b"4")
            await wait_until(lambda: len(received) == 4, what="four deliveries")
            first, second, third, _ = received
            await first.reject()
            # A second settle of one tag would make the broker close the channel.
            await second.ack()
            await second.ack()
            await second.nack()
            await third.ack(multiple=True)
            # The broker handles a channel's frames in order: had it closed the channel,
            # this would come on a new one.
            await publish(b"5")
            await wait_until(lambda: len(received) == 5, what="the fifth delivery")
            assert consumer.times_up == 1
            assert not any(d.redelivered for d in received)
        finally:
            await asyncio.wait_for(consumer.close(), 5)

        with pytest.raises(BROKER_ERRORS):
            await received[3].ack()  # its channel is closed: the broker has it back

        async def back_in_queue() -> bool:
            declared = await channel.declare_queue(name, passive=True)
            return declared.declaration_result.message_count == 2

        await wait_until(back_in_queue, what="the unsettled fourth and fifth back in the queue")
        bodies = [(await queue.get(no_ack=True)).body for _ in range(2)]
        assert bodies == [b"4", b"5"]

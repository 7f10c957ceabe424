"""A consumer the broker cancels (its queue was deleted) consumes again by itself."""

import asyncio

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

from tests.support.waiting import wait_until
from txmail.core.consumer import Consumer, Received
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

"""Read what txmail published, straight from its queues."""

import asyncio

import aio_pika
from aio_pika.abc import AbstractIncomingMessage


async def drain(
    amqp_url: str, queue: str, count: int, timeout: float = 10.0
) -> list[AbstractIncomingMessage]:
    """Take ``count`` messages off ``queue`` (acking them); fail if fewer arrive in time."""
    if count == 0:
        return []  # nothing to wait for
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        source = await channel.get_queue(queue, ensure=False)
        received: list[AbstractIncomingMessage] = []
        async with asyncio.timeout(timeout):
            async with source.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    received.append(message)
                    if len(received) == count:
                        break
        return received


async def queue_depth(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0

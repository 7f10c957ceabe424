"""A worker running in the test's event loop, a publisher, and readers of the output queues."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika

from tests.support.waiting import wait_until
from txmail.core.broker import Broker
from txmail.core.command import Configuration
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import delivery_timeouts
from txmail.workers.worker import run_worker


@asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[Broker]:
    broker = Broker(settings.amqp_url, Topology(settings.namespace), settings.publish_timeout)
    broker.start()
    try:
        await wait_until(lambda: broker.is_ready, what="publisher connected")
        yield broker
    finally:
        await broker.close()


def configuration(settings: Settings) -> Configuration:
    """What ``txmail.cli`` reads for a worker: the settings, and their rules file if any."""
    rules_file = None if settings.rules is None else read_rules_file(settings.rules)
    return Configuration(settings, rules_file)


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Store]:
    """A worker (tracker, sweeper, health monitor) until the block ends; yields its store."""
    config = configuration(settings)
    store = await open_store(
        settings.database_url, delivery_timeouts(config), settings.republish_after
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(config, store, stop))
    try:
        yield store
    finally:
        stop.set()
        await task
        await store.close()


@dataclass
class QueueReader:
    """Everything that landed on one queue so far (each message read and acked once)."""

    channel: aio_pika.abc.AbstractChannel
    queue_name: str

    async def take_all(self) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """What is on the queue now, without waiting (unlike amqp.drain, which waits for
        a count)."""
        queue = await self.channel.get_queue(self.queue_name, ensure=False)
        taken = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
        return taken


@asynccontextmanager
async def queue_readers(settings: Settings) -> AsyncIterator[tuple[QueueReader, QueueReader]]:
    """Readers of the fallback queue and of the dead-letter queue."""
    topology = Topology(settings.namespace)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel)
        yield (
            QueueReader(channel, topology.fallback_queue),
            QueueReader(channel, topology.dead_letter_queue),
        )


def body(message: aio_pika.abc.AbstractIncomingMessage) -> Any:
    return json.loads(message.body)

"""Queues a test run would leave on the broker: the fallback executor declares one delay
queue per delay of its retry schedule, named by the delay, and a test's namespace
cannot know which schedules its test used. Left there, quorum queues pile up by the
thousand over a day of runs, until RabbitMQ stops answering (seen here twice). So at
the end of a run, every queue of the run's namespaces is found by name and deleted."""

import shutil
import subprocess
import sys
from collections.abc import Iterable

import aio_pika


def queues_on_local_broker() -> list[str]:
    """Every queue's name, from ``rabbitmqctl`` (AMQP itself cannot list queues)."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "name", "--silent"],  # noqa: S607 - on PATH by design
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return listed.stdout.split()


async def delete_queues_of(amqp_url: str, namespaces: Iterable[str]) -> None:
    prefixes = tuple(f"{namespace}." for namespace in namespaces)
    if not prefixes or shutil.which("rabbitmqctl") is None:
        return
    try:
        names = [name for name in queues_on_local_broker() if name.startswith(prefixes)]
    except (OSError, subprocess.SubprocessError) as error:
        print(f"tests: could not list the queues left behind: {error}", file=sys.stderr)
        return
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)

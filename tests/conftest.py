"""Real parts for every test: a RabbitMQ found as below, and a namespace per test.

The broker is, in order: ``TXMAIL_TEST_AMQP_URL``; one listening on localhost:5672;
a RabbitMQ container started with testcontainers. Every test gets its own namespace
(exchange and queue prefix), deleted after it, so tests never see each other's messages.
"""

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import aio_pika
import pytest
import structlog

from tests.support.leftovers import delete_queues_of
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import DeliveryTimeouts

LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _plain_logging() -> Iterator[None]:
    """structlog's console output, with tracebacks rendered plainly as production does
    (``txmail.core.logs``): its default renders them with rich and every local variable,
    which took a loaded machine seconds per logged failure, so a test of repeated
    failures missed its deadline.

    Reset afterwards: a test that runs ``txmail.cli.main`` configures logging with
    loggers cached on first use, which ``structlog.testing.capture_logs`` in later tests
    could not see."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ]
    )
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    if url := os.environ.get("TXMAIL_TEST_AMQP_URL"):
        yield url
    elif _listening("127.0.0.1", 5672):
        yield LOCAL_AMQP_URL
    else:
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-alpine") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(5672)
            yield f"amqp://guest:guest@{host}:{port}/"


@pytest.fixture(scope="session")
def namespaces_used(amqp_url: str) -> Iterator[set[str]]:
    """Every namespace this run made; what is left of them is deleted at its end."""
    used: set[str] = set()
    yield used
    if amqp_url == LOCAL_AMQP_URL:
        asyncio.run(delete_queues_of(amqp_url, used))


@pytest.fixture
async def namespace(amqp_url: str, namespaces_used: set[str]) -> AsyncIterator[str]:
    name = f"txmail-test-{uuid.uuid4().hex[:12]}"
    namespaces_used.add(name)
    yield name
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await Topology(name).delete(await connection.channel())


@pytest.fixture
def settings(amqp_url: str, namespace: str) -> Settings:
    return Settings(amqp_url=amqp_url, namespace=namespace, http_host="127.0.0.1", http_port=0)


# --- State stores: SQLite and PostgreSQL ------------------------------------------
# PostgreSQL is, in order: ``TXMAIL_TEST_POSTGRES_URL``; one listening on localhost:5432
# (user postgres, database test); a container started with testcontainers. Every test
# gets its own schema, dropped after it.

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if url := os.environ.get("TXMAIL_TEST_POSTGRES_URL"):
        yield url
    elif _listening("127.0.0.1", 5432):
        yield LOCAL_POSTGRES_URL
    else:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()


@pytest.fixture
async def postgres_schema_url(postgres_url: str) -> AsyncIterator[str]:
    """A URL whose connections work in a fresh, private schema."""
    import asyncpg

    schema = f"txmail_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        separator = "&" if "?" in postgres_url else "?"
        yield f"{postgres_url}{separator}search_path={schema}"
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'txmail.db'}"
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """An empty store, migrated, on each database (a test module may seed its own)."""
    opened = await open_store(database_url, DeliveryTimeouts(timedelta(minutes=10)))
    yield opened
    await opened.close()

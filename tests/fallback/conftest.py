"""Fixtures for the fallback tests: tiny retry delays, the stand-in servers, a rules
file writer, a view of the attempt events the executor publishes, and all of these
together for an executor test."""

import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from tests.support.fallback import RETRY_SCHEDULE, AttemptLog, ExecutorUnderTest, receiver_handlers
from tests.support.harness import publisher
from tests.support.ports import free_port
from tests.support.rules_file import Table, write_rules_file
from tests.support.servers import MailCollector, Receiver, check_login
from txmail.core.broker import Broker
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.fallback.configured import FallbackRules, configure
from txmail.fallback.executor.service import fallback_topology
from txmail.fallback.handler import HandlerResources

# aiosmtpd logs each connection at info from its own thread, sometimes after pytest has
# closed the stream it captured: "--- Logging error ---" and a stack in the output,
# which hides real failures. Its warnings and errors still show.
logging.getLogger("mail.log").setLevel(logging.WARNING)


@pytest.fixture
def fallback_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "fallback_retry_schedule": RETRY_SCHEDULE,
            "shutdown_timeout": timedelta(seconds=2),
            "database_url": f"sqlite:///{tmp_path / 'txmail.db'}",
        }
    )


@pytest.fixture
async def namespace(namespace: str, amqp_url: str) -> AsyncIterator[str]:
    """The shared namespace fixture, plus the delay queues of the test schedule, which
    only a topology that knows the schedule lists."""
    yield namespace
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        topology = Topology(namespace, tuple(RETRY_SCHEDULE))
        await topology.delete(await connection.channel())


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    runner = web.AppRunner(receiver.app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}"
    yield receiver
    await runner.cleanup()


@pytest.fixture
def smtp_server() -> Iterator[tuple[MailCollector, int]]:
    collector = MailCollector()
    port = free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    yield collector, port
    controller.stop()


@pytest.fixture
def smtp_server_with_login() -> Iterator[tuple[MailCollector, int]]:
    """A relay that wants a login (over plain text: there is no certificate in tests)."""
    collector = MailCollector()
    port = free_port()
    controller = Controller(
        collector,
        hostname="127.0.0.1",
        port=port,
        authenticator=check_login,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    yield collector, port
    controller.stop()


@pytest.fixture
def relay_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (certificate, key), made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "relay.pem", tmp_path / "relay.key"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def smtp_server_with_starttls(
    relay_certificate: tuple[Path, Path],
) -> Iterator[tuple[MailCollector, int]]:
    """A relay that takes mail only after STARTTLS."""
    cert, key = relay_certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    collector = MailCollector()
    port = free_port()
    controller = Controller(
        collector, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True
    )
    controller.start()
    yield collector, port
    controller.stop()


@pytest.fixture
def write_rules(tmp_path: Path, receiver: Receiver) -> Callable[..., FallbackRules]:
    """Writes and loads a rules file: the receiver's handlers and the given rules."""

    def write(*rules: Table) -> FallbackRules:
        handlers = receiver_handlers(receiver)
        return configure(
            read_rules_file(write_rules_file(tmp_path / "rules.toml", *rules, handlers=handlers))
        )

    return write


@pytest.fixture
async def attempt_log(fallback_settings: Settings) -> AsyncIterator[AttemptLog]:
    log = AttemptLog()
    connection = await aio_pika.connect(fallback_settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await fallback_topology(fallback_settings).declare(channel)
        queue = await channel.get_queue(fallback_topology(fallback_settings).tracker_queue)
        await queue.consume(log.on_message)
        yield log


@pytest.fixture
async def resources(settings: Settings) -> AsyncIterator[HandlerResources]:
    """What the executor gives handlers: an HTTP client and its broker."""
    async with publisher(settings) as broker, aiohttp.ClientSession() as http:
        yield HandlerResources(http, broker)


@pytest.fixture
async def http_resources(settings: Settings) -> AsyncIterator[HandlerResources]:
    """The same for handlers that speak only HTTP or SMTP: their tests need no broker,
    so the broker is never started (a handler that used it would fail)."""
    broker = Broker(settings.amqp_url, Topology(settings.namespace), settings.publish_timeout)
    async with aiohttp.ClientSession() as http:
        yield HandlerResources(http, broker)
    await broker.close()


@pytest.fixture
def executor(
    fallback_settings: Settings, receiver: Receiver, attempt_log: AttemptLog, tmp_path: Path
) -> ExecutorUnderTest:
    return ExecutorUnderTest(fallback_settings, receiver, attempt_log, tmp_path / "rules.toml")

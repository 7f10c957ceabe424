"""Readiness as the tests ask it, and settings whose broker connections a test can cut."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from tests.support.broker_url import host_and_port, via_port
from tests.support.tcp_proxy import TcpProxy
from txmail.core.settings import Settings


class Part(Protocol):
    async def not_ready(self) -> list[str]: ...


async def is_ready(part: Part) -> bool:
    return await part.not_ready() == []


async def is_not_consuming(part: Part) -> bool:
    return any(problem.startswith("not consuming") for problem in await part.not_ready())


@asynccontextmanager
async def proxied(settings: Settings) -> AsyncIterator[tuple[TcpProxy, Settings]]:
    """A proxy to the broker, and ``settings`` connecting through it."""
    proxy = TcpProxy(*host_and_port(settings.amqp_url))
    await proxy.start()
    try:
        yield (
            proxy,
            settings.model_copy(update={"amqp_url": via_port(settings.amqp_url, proxy.port)}),
        )
    finally:
        await proxy.close()

"""Run the real ingress app on a real localhost port for a test."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ingress.app import create_app
from tests.waiting import wait_until
from txmail.settings import Settings


@asynccontextmanager
async def running_ingress(
    settings: Settings, wait_ready: bool = True
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        if wait_ready:

            async def ready() -> bool:
                return (await client.get("/readyz")).status == 200

            await wait_until(ready, what="the ingress to connect to RabbitMQ")
        yield client
    finally:
        await client.close()

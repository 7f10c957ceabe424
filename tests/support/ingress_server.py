"""Run the real ingress app on a real localhost port for a test, served as in production."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from tests.support.waiting import wait_until
from txmail.core.http import app_runner
from txmail.core.settings import Settings
from txmail.ingress.app import create_app


class ProductionServer(TestServer):
    """aiohttp's test server, with the runner (limits, JSON errors) every txmail server uses."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app)
        self._settings = settings

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return app_runner(self.app, self._settings)


@asynccontextmanager
async def running_ingress(
    settings: Settings, wait_ready: bool = True
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client: TestClient[web.Request, web.Application] = TestClient(
        ProductionServer(create_app(settings), settings)
    )
    await client.start_server()
    try:
        if wait_ready:

            async def ready() -> bool:
                return (await client.get("/readyz")).status == 200

            await wait_until(ready, what="the ingress to connect to RabbitMQ")
        yield client
    finally:
        await client.close()

"""txmail as `txmail run` composes it, in the test's event loop: the real ingress, a
worker on SQLite, the fallback executor with a webhook handler aimed at a small real
receiver, and the API with its console, all on real RabbitMQ."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.harness import running_worker
from tests.support.rules_file import webhook_to
from tests.support.servers import Receiver
from tests.support.waiting import wait_until
from txmail.core.http import serving
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.fallback.configured import configure
from txmail.fallback.executor.service import running_executor
from txmail.fallback.parking.operations import BrokerParkedFallbacks
from txmail.ingress.app import create_app
from txmail.workers.api import api_tokens, create_api_app
from txmail.workers.store.protocol import MessageView, Store


@dataclass
class Deployment:
    console: str  # the API's base URL
    ingress: str
    store: Store
    receiver: Receiver
    settings: Settings

    async def post(self, path: str, body: Any) -> None:
        headers = {}
        if self.settings.api_token is not None:
            headers["Authorization"] = f"Bearer {self.settings.api_token.get_secret_value()}"
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.ingress}{path}", json=body, headers=headers) as response,
        ):
            assert response.status == 202, await response.text()

    async def send(
        self, external_send_id: str, *statuses: str, campaign: str = "campaign-a", **extra: Any
    ) -> None:
        """Register a send, then post Braze's postbacks for it, stamped just now."""
        await self.post(
            "/v1/sends",
            {
                "external_send_id": external_send_id,
                "campaign_api_id": campaign,
                "recipient": {"email": "ada@example.com", "phone": "+15005550006"},
                "variables": {"first_name": "Ada"},
            },
        )
        sent = datetime.now(UTC)  # after the registration, as a real sender does it
        postbacks = [
            {
                "dispatch_id": f"dispatch-{external_send_id}",
                "status": status,
                "metadata": {
                    "external_send_id": external_send_id,
                    "campaign_api_id": campaign,
                    f"{status}_at": (sent + timedelta(seconds=2 * i)).isoformat(),
                    **(extra if status in ("bounced", "aborted") else {}),
                },
            }
            for i, status in enumerate(statuses)
        ]
        await self.post("/postbacks", postbacks)

    async def message(self, external_send_id: str, outcome: str) -> MessageView:
        """The message once the worker has brought it to ``outcome``."""
        found: list[MessageView] = []

        async def reached() -> bool:
            message = await self.store.find(external_send_id=external_send_id)
            found[:] = [message] if message is not None else []
            return message is not None and message.outcome.value == outcome

        await wait_until(reached, what=f"{external_send_id} {outcome}")
        return found[0]


@asynccontextmanager
async def deployed(settings: Settings, tmp_path: Path) -> AsyncIterator[Deployment]:
    rules_path = tmp_path / "rules.toml"
    receiver = Receiver()
    async with AsyncExitStack() as running:
        runner = web.AppRunner(receiver.app, access_log=None)
        await runner.setup()
        running.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        rules_path.write_text(webhook_to(receiver.url, on=("bounced", "aborted"), timeout="2s"))

        ingress_port = await running.enter_async_context(
            serving(create_app(settings), "127.0.0.1", 0, settings)
        )
        store = await running.enter_async_context(running_worker(settings))
        stop = asyncio.Event()
        running.callback(stop.set)
        await running.enter_async_context(
            running_executor(settings, configure(read_rules_file(rules_path)), stop)
        )
        ingress = f"http://127.0.0.1:{ingress_port}"
        await wait_until(lambda: _ready(ingress), what="the ingress connected to RabbitMQ")
        api = create_api_app(store, api_tokens(settings), parked=BrokerParkedFallbacks(settings))
        api_port = await running.enter_async_context(serving(api, "127.0.0.1", 0, settings))
        yield Deployment(
            console=f"http://127.0.0.1:{api_port}",
            ingress=ingress,
            store=store,
            receiver=receiver,
            settings=settings,
        )


async def _ready(url: str) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
        return response.status == 200

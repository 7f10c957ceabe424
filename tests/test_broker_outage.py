"""The broker goes away: never a 202 for an unconfirmed publish, and recovery by itself."""

import asyncio

from tests.support.amqp import drain
from tests.support.broker_url import host_and_port, via_port
from tests.support.ingress_server import running_ingress
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.broker import Broker
from txmail.core.settings import Settings
from txmail.core.topology import Topology


async def test_outage_answers_503_then_recovers(settings: Settings, amqp_url: str) -> None:
    proxy = TcpProxy(*host_and_port(amqp_url))
    await proxy.start()
    proxied = settings.model_copy(update={"amqp_url": via_port(amqp_url, proxy.port)})
    try:
        async with running_ingress(proxied) as client:
            first = await client.post(
                "/postbacks", json={"dispatch_id": "before", "status": "sent"}
            )
            assert first.status == 202

            await proxy.cut()

            async def refused() -> bool:
                response = await client.post(
                    "/postbacks", json={"dispatch_id": "during", "status": "sent"}
                )
                assert response.status in (202, 503), response.status
                return response.status == 503

            await wait_until(refused, what="the ingress to notice the outage")
            body = await (
                await client.post("/postbacks", json={"dispatch_id": "during", "status": "sent"})
            ).json()
            assert body["error"] == "broker_unavailable"
            assert (await client.get("/readyz")).status == 503

            await proxy.start()

            async def ready() -> bool:
                return (await client.get("/readyz")).status == 200

            await wait_until(ready, timeout=20, what="the ingress to reconnect")
            after = await client.post("/postbacks", json={"dispatch_id": "after", "status": "sent"})
            assert after.status == 202
    finally:
        await proxy.close()

    queue = Topology(settings.namespace).tracker_queue
    ids = [m.message_id for m in await drain(amqp_url, queue, 2, timeout=5)]
    assert len(ids) == 2


async def test_the_ingress_starts_before_the_broker_and_connects_when_it_comes(
    settings: Settings, amqp_url: str
) -> None:
    proxy = TcpProxy(*host_and_port(amqp_url))
    await proxy.start()
    await proxy.cut()  # the port is known, nothing listens on it yet
    proxied = settings.model_copy(update={"amqp_url": via_port(amqp_url, proxy.port)})
    try:
        async with running_ingress(proxied, wait_ready=False) as client:
            assert (await client.get("/healthz")).status == 200
            assert (await client.get("/readyz")).status == 503
            refused = await client.post("/postbacks", json={"dispatch_id": "d", "status": "sent"})
            assert refused.status == 503
            await proxy.start()

            async def ready() -> bool:
                return (await client.get("/readyz")).status == 200

            await wait_until(ready, timeout=20, what="the first connection")
            accepted = await client.post("/postbacks", json={"dispatch_id": "d", "status": "sent"})
            assert accepted.status == 202
    finally:
        await proxy.close()
    await asyncio.wait_for(
        drain(amqp_url, Topology(settings.namespace).tracker_queue, 1), timeout=10
    )


async def test_close_ends_a_connection_attempt_in_progress(
    settings: Settings, amqp_url: str
) -> None:
    """Else a process that fails at start-up never finishes: asyncio.run waits for it."""
    proxy = TcpProxy(*host_and_port(amqp_url))
    await proxy.start()
    proxy.pause()  # the broker accepts the connection and never answers
    broker = Broker(
        via_port(amqp_url, proxy.port), Topology(settings.namespace), settings.publish_timeout
    )
    try:
        broker.start()
        await wait_until(lambda: proxy.held > 0, what="the attempt to reach the broker")
        await asyncio.wait_for(broker.close(), timeout=2)
        left = [task for task in asyncio.all_tasks() if "aio_pika" in _source(task)]
        assert left == []
    finally:
        await proxy.close()


def _source(task: asyncio.Task[object]) -> str:
    code = getattr(task.get_coro(), "cr_code", None)
    return code.co_filename if code else ""

"""Overload at the door: when RabbitMQ falls behind or blocks publishers, the ingress
answers 503 with Retry-After at once instead of making every request wait longer."""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import structlog
from pamqp import commands, frame

from tests.support.amqp import drain
from tests.support.broker_url import host_and_port, via_port
from tests.support.ingress_server import running_ingress
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.ingress.context import BROKER

POSTBACK = {"dispatch_id": "d-1", "status": "sent"}


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(*host_and_port(amqp_url))
    await proxy.start()
    yield proxy
    await proxy.close()


def through(proxy: TcpProxy, settings: Settings, amqp_url: str, **update: object) -> Settings:
    return settings.model_copy(
        update={
            "amqp_url": via_port(amqp_url, proxy.port),
            "publish_timeout": timedelta(seconds=20),
            **update,
        }
    )


async def test_past_the_bound_of_publishes_in_flight_the_answer_is_503_at_once(
    settings: Settings, amqp_url: str, proxy: TcpProxy
) -> None:
    bounded = through(proxy, settings, amqp_url, max_publishes_in_flight=2)
    async with running_ingress(bounded) as client:
        proxy.pause()  # RabbitMQ's confirms are held: two postbacks wait in flight
        waiting = asyncio.create_task(
            client.post("/postbacks", json=[POSTBACK, {**POSTBACK, "x": 1}])
        )
        await wait_until(lambda: proxy.held > 0, what="the publishes to reach the proxy")

        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                refused = await asyncio.wait_for(
                    client.post("/postbacks", json=POSTBACK), timeout=2
                )
                assert refused.status == 503
                assert refused.headers["Retry-After"] == "1"
                assert (await refused.json())["error"] == "overloaded"
        # Said once, not once per request.
        assert [e["log_level"] for e in logs if e["log_level"] != "debug"] == ["warning"]

        proxy.resume()
        assert (await waiting).status == 202
        assert (await client.post("/postbacks", json={**POSTBACK, "x": 2})).status == 202
        assert (await client.post("/v1/sends", json={"external_send_id": "o"})).status == 202
    messages = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 4)
    assert len(messages) == 4


async def test_while_rabbitmq_blocks_publishers_the_answer_is_503_at_once(
    settings: Settings, amqp_url: str, proxy: TcpProxy
) -> None:
    async with running_ingress(through(proxy, settings, amqp_url)) as client:
        # What RabbitMQ sends on a memory or disk alarm; not raised for real, because
        # the alarm would block every other test's publishers on the shared broker.
        proxy.send_to_clients(frame.marshal(commands.Connection.Blocked(reason="low on memory"), 0))
        broker = client.app[BROKER]
        await wait_until(lambda: broker.is_blocked, what="the Blocked frame to be read")
        for path, body in (("/postbacks", POSTBACK), ("/v1/sends", {"external_send_id": "o"})):
            response = await asyncio.wait_for(client.post(path, json=body), timeout=2)
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["error"] == "overloaded"

        proxy.send_to_clients(frame.marshal(commands.Connection.Unblocked(), 0))
        await wait_until(lambda: not broker.is_blocked, what="the Unblocked frame to be read")
        assert (await client.post("/postbacks", json=POSTBACK)).status == 202
    [message] = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 1)
    assert json.loads(message.body) == POSTBACK

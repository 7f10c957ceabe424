"""A postback RabbitMQ confirms but cannot route to a queue is not accepted: 503, not 202."""

import aio_pika

from tests.support.ingress_server import running_ingress
from txmail.core.settings import Settings
from txmail.core.topology import Topology


async def test_a_postback_no_queue_takes_is_refused_with_503(
    settings: Settings, amqp_url: str
) -> None:
    topology = Topology(settings.namespace)
    async with running_ingress(settings) as client:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            tracker = await channel.get_queue(topology.tracker_queue)
            await tracker.unbind(topology.events_exchange, "postback.#")
            # Unroutable: the broker acks the publish but drops the message.
            response = await client.post("/postbacks", json={"dispatch_id": "d", "status": "sent"})
            assert response.status == 503
            assert (await response.json())["error"] == "broker_unavailable"

            await tracker.bind(topology.events_exchange, "postback.#")
            response = await client.post("/postbacks", json={"dispatch_id": "d", "status": "sent"})
            assert response.status == 202

"""The worker against a real RabbitMQ, on both stores: settling deliveries, publishing,
and outages. Its logic on a batch, without a broker, is in test_tracker_batches.py."""

from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage
from structlog.testing import capture_logs

from tests.support.braze import BRAZE_EXAMPLES
from tests.support.broker_url import host_and_port, via_port
from tests.support.factories import NOT_THE_CONTRACT, outgoing_postback, raw_postback
from tests.support.harness import body, publisher, queue_readers, running_worker
from tests.support.poison import refuse_poison
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from txmail.core.events import (
    utc_now,
)
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.state import Outcome
from txmail.workers.store.protocol import Store


@pytest.fixture
def worker_settings(settings: Settings, database_url: str) -> Settings:
    return settings.model_copy(
        update={
            "database_url": database_url,
            "sweep_interval": timedelta(milliseconds=100),
            "delivery_timeout": timedelta(seconds=1),
            # Most tests post a `sent` and nothing after it: Braze's stream is silent.
            "watermark_skew": timedelta(milliseconds=100),
            "max_lateness": timedelta(milliseconds=300),
        }
    )


async def _outcome(store: Store, dispatch_id: str) -> Outcome | None:
    message = await store.find(dispatch_id=dispatch_id)
    return message.outcome if message else None


async def _known(store: Store, dispatch_id: str) -> bool:
    return await store.find(dispatch_id=dispatch_id) is not None


async def _published(store: Store, **lookup: str) -> bool:
    message = await store.find(**lookup)
    return bool(message and message.decision and message.decision.published_at)


async def test_what_is_not_the_contract_is_dead_lettered_without_blocking(
    worker_settings: Settings,
) -> None:
    now = utc_now()
    bad = NOT_THE_CONTRACT
    good = outgoing_postback(raw_postback("after-poison", "delivered"), now)
    async with running_worker(worker_settings) as store, publisher(worker_settings) as broker:
        await broker.publish([*bad, good])
        await wait_until(
            lambda: _outcome_is(store, "after-poison", Outcome.DELIVERED),
            what="the good message after the bad ones",
        )
        async with queue_readers(worker_settings) as (_, dead):
            parked = []

            async def all_parked() -> bool:
                parked.extend(await dead.take_all())
                return len(parked) == len(bad)

            await wait_until(all_parked, what="bad messages dead-lettered")
    assert sorted(m.message_id or "" for m in parked) == [
        "bad-1",
        "bad-2",
        "bad-3",
        "bad-4",
        "bad-5",
    ]
    # At once, by the worker, not after going round the queue to the delivery limit.
    assert [_death_reason(m) for m in parked] == ["rejected"] * len(bad)


def _death_reason(message: AbstractIncomingMessage) -> object:
    deaths = message.headers.get("x-death")
    assert isinstance(deaths, list)
    death = deaths[0]
    assert isinstance(death, dict)
    return death.get("reason")


async def _outcome_is(store: Store, dispatch_id: str, outcome: Outcome) -> bool:
    return await _outcome(store, dispatch_id) == outcome


async def test_a_message_the_store_cannot_take_is_dead_lettered_after_the_delivery_limit(
    settings: Settings, postgres_schema_url: str
) -> None:
    # A trigger refuses one message: valid by the contract, yet it fails in the store
    # every time, like a bug would. Its neighbours in the batch must still be applied.
    worker_settings = settings.model_copy(update={"database_url": postgres_schema_url})
    now = utc_now()
    before = outgoing_postback(raw_postback("before", "delivered"), now)
    poison = outgoing_postback(raw_postback("poison", "sent"), now)
    after = outgoing_postback(raw_postback("after", "delivered"), now)
    async with running_worker(worker_settings) as store, publisher(worker_settings) as broker:
        await refuse_poison(postgres_schema_url)
        await broker.publish([before, poison, after])
        async with queue_readers(worker_settings) as (_, dead):
            parked = []

            async def poison_parked() -> bool:
                parked.extend(await dead.take_all())
                return bool(parked)

            await wait_until(poison_parked, what="the poison message dead-lettered")
        assert await _outcome(store, "before") == Outcome.DELIVERED
        assert await _outcome(store, "after") == Outcome.DELIVERED
    assert [m.message_id for m in parked] == [poison.message_id]


async def test_a_fallback_request_the_broker_refused_is_published_later_once(
    worker_settings: Settings,
) -> None:
    worker_settings = worker_settings.model_copy(
        update={"republish_after": timedelta(milliseconds=300)}
    )
    topology = Topology(worker_settings.namespace)
    bounced = raw_postback("refused", "bounced", reason="550")
    warm_up = raw_postback("warm-up", "delivered")
    async with (
        running_worker(worker_settings) as store,
        publisher(worker_settings) as broker,
        queue_readers(worker_settings) as (fallback, _),
    ):
        # Once the worker applied something it has declared the topology it wants...
        await broker.publish([outgoing_postback(warm_up, utc_now())])
        await wait_until(
            lambda: _outcome_is(store, "warm-up", Outcome.DELIVERED), what="the worker consuming"
        )
        # ...so now the request is unroutable: returned to the worker, not confirmed.
        queue = await fallback.channel.get_queue(topology.fallback_queue)
        await queue.unbind(topology.events_exchange, "fallback.request.#")
        await broker.publish([outgoing_postback(bounced, utc_now())])
        await wait_until(lambda: _has_decision(store, "refused"), what="the decision recorded")
        assert not await _published(store, dispatch_id="refused")
        await queue.bind(topology.events_exchange, "fallback.request.#")
        await wait_until(lambda: _published(store, dispatch_id="refused"), what="republish")
        requests = await fallback.take_all()
    assert [body(r)["dispatch_id"] for r in requests] == ["refused"]


async def _has_decision(store: Store, dispatch_id: str) -> bool:
    message = await store.find(dispatch_id=dispatch_id)
    return message is not None and message.decision is not None


async def test_a_backlog_drained_after_a_restart_makes_no_false_timeouts(
    worker_settings: Settings,
) -> None:
    # Sent and delivered both reached the ingress minutes before the deadline, but sat in
    # the queue while no worker ran. Applied one batch at a time, each `sent` is due when
    # applied: the sweeper must not decide a timeout before its `delivered` is applied.
    backlog_settings = worker_settings.model_copy(
        update={"batch_size": 1, "sweep_interval": timedelta(milliseconds=10)}
    )
    now = utc_now()
    arrived = now - timedelta(minutes=5)
    sent_at = (now - timedelta(seconds=2)).isoformat()  # deadline: 1 s ago
    backlog = []
    for n in range(60):
        backlog.append(outgoing_postback(raw_postback(f"b{n}", "sent", sent_at=sent_at), arrived))
        backlog.append(outgoing_postback(raw_postback(f"b{n}", "delivered"), arrived))
    async with publisher(backlog_settings) as broker:
        await broker.publish(backlog)
        async with running_worker(backlog_settings) as store:

            async def drained() -> bool:
                counts = await store.counts()
                return counts.messages == 60 and counts.pending_deadlines == 0

            await wait_until(drained, what="the backlog applied")
            counts = await store.counts()
    assert counts.decisions == 0


async def test_a_store_outage_is_retried_with_growing_waits(
    settings: Settings, postgres_schema_url: str
) -> None:
    proxy = TcpProxy(*host_and_port(postgres_schema_url))
    await proxy.start()
    proxied = settings.model_copy(
        update={
            "database_url": via_port(postgres_schema_url, proxy.port),
            "delivery_timeout": timedelta(seconds=1),
        }
    )

    def retries(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
        return [e for e in logs if e["event"] == "store not reachable, retrying"]

    try:
        async with running_worker(proxied) as store, publisher(proxied) as broker:
            await proxy.cut()
            with capture_logs() as logs:
                await broker.publish([outgoing_postback(BRAZE_EXAMPLES[0], utc_now())])
                await wait_until(lambda: len(retries(logs)) >= 3, 15, "three store retries")
            # One line per attempt, each wait longer than the one before (with jitter).
            waits = [float(e["retry_in"].removesuffix("s")) for e in retries(logs)]
            assert waits[0] <= 1.5
            assert waits[2] >= 2.0
            await proxy.start()
            dispatch_id = BRAZE_EXAMPLES[0]["dispatch_id"]
            await wait_until(lambda: _known(store, dispatch_id), 15, "the postback applied")
    finally:
        await proxy.close()

"""The worker against a real RabbitMQ, on both stores."""

import json
from collections.abc import MutableMapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage
from structlog.testing import capture_logs

from tests.broker_url import host_and_port, via_port
from tests.factories import outgoing_postback, raw_postback
from tests.harness import body, publisher, queue_readers, running_worker
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_until
from txmail.core.broker import Outgoing
from txmail.core.events import (
    FALLBACK_ATTEMPT_TYPE,
    POSTBACK_TYPE,
    SEND_REGISTERED_ROUTING_KEY,
    SEND_REGISTRATION_TYPE,
    AttemptOutcome,
    FallbackAttempt,
    event_id,
    utc_now,
)
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.state import Outcome
from txmail.workers.store.protocol import Store

BRAZE = json.loads((Path(__file__).parent / "braze-postbacks.json").read_text())["examples"]


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


async def test_braze_examples_twice_make_one_fallback_request(worker_settings: Settings) -> None:
    now = utc_now()
    messages = [outgoing_postback(raw, now) for raw in BRAZE]
    async with running_worker(worker_settings) as store, publisher(worker_settings) as broker:
        await broker.publish(messages + messages[::-1])
        dispatch_id = BRAZE[0]["dispatch_id"]
        await wait_until(lambda: _published(store, dispatch_id=dispatch_id), what="decision")
        async with queue_readers(worker_settings) as (fallback, _):
            [request] = await fallback.drain()
        message = await store.find(dispatch_id=dispatch_id)
    assert message is not None
    assert message.outcome == Outcome.BOUNCED
    assert len(message.timeline) == 5
    assert body(request)["trigger"] == "bounced"
    assert request.message_id == body(request)["idempotency_key"]


async def test_what_is_not_the_contract_is_dead_lettered_without_blocking(
    worker_settings: Settings,
) -> None:
    now = utc_now()
    bad = [
        Outgoing("postback.sent", b"{not json", "bad-1", POSTBACK_TYPE),
        Outgoing("postback.sent", b'{"status": "sent"}', "bad-2", POSTBACK_TYPE),
        Outgoing("send.other", b"{}", "bad-3", "something_else"),
        Outgoing("postback.sent", b"[" * 5000 + b"]" * 5000, "bad-4", POSTBACK_TYPE),
        Outgoing(
            "postback.sent",
            b'{"dispatch_id": "d", "status": "sent", "metadata": {"x": "\\ud800"}}',
            "bad-5",
            POSTBACK_TYPE,
        ),
    ]
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
                parked.extend(await dead.drain())
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


async def test_deadline_fires_on_time_and_a_late_delivered_is_recorded_late(
    worker_settings: Settings,
) -> None:
    sent_at = utc_now()
    sent = raw_postback("slow", "sent", sent_at=sent_at.isoformat())
    async with running_worker(worker_settings) as store, publisher(worker_settings) as broker:
        await broker.publish([outgoing_postback(sent, sent_at)])
        await wait_until(lambda: _published(store, dispatch_id="slow"), what="timeout decision")
        message = await store.find(dispatch_id="slow")
        assert message is not None
        assert message.decision is not None
        assert message.decision.trigger == "timeout"
        fired_after = message.decision.decided_at - (sent_at + timedelta(seconds=1))
        assert timedelta(0) <= fired_after < timedelta(seconds=2)
        delivered = raw_postback("slow", "delivered")
        await broker.publish([outgoing_postback(delivered, utc_now())])
        await wait_until(
            lambda: _outcome_is(store, "slow", Outcome.DELIVERED_LATE), what="delivered late"
        )
        async with queue_readers(worker_settings) as (fallback, _):
            [request] = await fallback.drain()
    assert body(request)["trigger"] == "timeout"


async def _outcome_is(store: Store, dispatch_id: str, outcome: Outcome) -> bool:
    return await _outcome(store, dispatch_id) == outcome


async def test_registered_send_never_sent_gets_a_fallback_with_its_recipient(
    worker_settings: Settings,
) -> None:
    registration = {
        "external_send_id": "order-1234",
        "campaign_api_id": "c1",
        "recipient": {"phone": "+15550100"},
        "variables": {"first_name": "Ada"},
        "delivery_timeout": "500ms",
    }
    registered = Outgoing(
        SEND_REGISTERED_ROUTING_KEY,
        json.dumps(registration).encode(),
        event_id(registration),
        SEND_REGISTRATION_TYPE,
        headers={"received_at": utc_now().isoformat()},
    )
    async with running_worker(worker_settings) as store, publisher(worker_settings) as broker:
        await broker.publish([registered])
        await wait_until(lambda: _published(store, external_send_id="order-1234"), what="not_sent")
        async with queue_readers(worker_settings) as (fallback, _):
            [request] = await fallback.drain()
        decided = body(request)
        attempt = FallbackAttempt(
            idempotency_key=decided["idempotency_key"],
            dispatch_id=None,
            external_send_id="order-1234",
            handler="sms",
            attempt=1,
            outcome=AttemptOutcome.SUCCEEDED,
            at=utc_now(),
        )
        await broker.publish(
            [
                Outgoing(
                    attempt.routing_key,
                    attempt.model_dump_json().encode(),
                    attempt.event_id,
                    FALLBACK_ATTEMPT_TYPE,
                )
            ]
        )

        async def attempt_recorded() -> bool:
            message = await store.find(external_send_id="order-1234")
            return message is not None and len(message.timeline) == 2

        await wait_until(attempt_recorded, what="the attempt on the timeline")
    assert decided["trigger"] == "not_sent"
    assert decided["recipient"] == {"email": None, "phone": "+15550100"}
    assert decided["variables"] == {"first_name": "Ada"}


_REFUSE_POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.dispatch_id = 'poison' THEN RAISE EXCEPTION 'refusing the poison message'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON messages
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


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
        database = await asyncpg.connect(postgres_schema_url)
        try:
            await database.execute(_REFUSE_POISON)
        finally:
            await database.close()
        await broker.publish([before, poison, after])
        async with queue_readers(worker_settings) as (_, dead):
            parked = []

            async def poison_parked() -> bool:
                parked.extend(await dead.drain())
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
        requests = await fallback.drain()
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
                await broker.publish([outgoing_postback(BRAZE[0], utc_now())])
                await wait_until(lambda: len(retries(logs)) >= 3, 15, "three store retries")
            # One line per attempt, each wait longer than the one before (with jitter).
            waits = [float(e["retry_in"].removesuffix("s")) for e in retries(logs)]
            assert waits[0] <= 1.5
            assert waits[2] >= 2.0
            await proxy.start()
            dispatch_id = BRAZE[0]["dispatch_id"]
            await wait_until(lambda: _known(store, dispatch_id), 15, "the postback applied")
    finally:
        await proxy.close()

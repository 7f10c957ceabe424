"""Through the real pipeline: postbacks whose Braze times show delivery slowing down
make Braze degraded once, and a rule sends that to a webhook receiver; a timeout
while Braze is degraded goes to the rule for that. Real RabbitMQ, worker, executor and
SQLite; the receiver is a small real HTTP server."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from tests.support.factories import outgoing_postback, raw_postback
from tests.support.fallback import receiver_handlers
from tests.support.harness import publisher, running_worker
from tests.support.rules_file import rule, write_rules_file
from tests.support.servers import Receiver
from tests.support.waiting import wait_until
from txmail.core.broker import Broker
from txmail.core.events import HEALTH_CHANGE_TYPE, HealthChange, utc_now
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.fallback.configured import configure
from txmail.fallback.executor.service import running_executor
from txmail.workers.health.store import HealthReport

# Judged every 10s / 30: a third of a second.
HEALTH = {
    "window": "10s",
    "min_sends": 5,
    "degraded_p95": "2s",
    "recovered_p95": "1s",
    "recover_after": "1m",
}


@asynccontextmanager
async def health_events(settings: Settings) -> AsyncIterator[list[HealthChange]]:
    """Every health change published on the events exchange, from a queue of the test's."""
    seen: list[HealthChange] = []

    async def take(message: AbstractIncomingMessage) -> None:
        if message.type == HEALTH_CHANGE_TYPE:
            seen.append(HealthChange.model_validate_json(message.body))
        await message.ack()

    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        events = await Topology(settings.namespace).declare(channel)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(events, routing_key="health.#")
        await queue.consume(take)
        yield seen


async def post_sends(broker: Broker, first: int, latency: timedelta, now: datetime) -> None:
    """Ten sends, each `sent` and `delivered` as Braze reports them, delivered just now."""
    outgoing = []
    for i in range(first, first + 10):
        ids = {"external_send_id": f"order-{i}"}
        sent = raw_postback(f"d{i}", "sent", sent_at=(now - latency).isoformat(), **ids)
        delivered = raw_postback(f"d{i}", "delivered", delivered_at=now.isoformat(), **ids)
        outgoing += [outgoing_postback(sent, now), outgoing_postback(delivered, now)]
    await broker.publish(outgoing)


async def test_delivery_slowing_down_degrades_once_and_a_rule_calls_the_webhook(
    fallback_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    path = write_rules_file(
        tmp_path / "rules.toml",
        rule("ops-hook", on=("braze_degraded",)),
        handlers=receiver_handlers(receiver),
        health=HEALTH,
    )
    rules = configure(read_rules_file(path))
    settings = fallback_settings.model_copy(
        update={"rules": path, "sweep_interval": timedelta(milliseconds=50)}
    )
    reports: list[HealthReport] = []

    async def judged(sends: int, after: datetime | None = None) -> bool:
        reports.append(await store.health.report())
        overall = reports[-1].overall
        later = after is None or (overall is not None and overall.evaluated_at > after)
        return overall is not None and overall.figures["sends"] == sends and later

    async with (
        health_events(settings) as changes,
        running_worker(settings) as store,
        running_executor(settings, rules),
        publisher(settings) as broker,
    ):
        await post_sends(broker, 0, timedelta(milliseconds=300), utc_now())
        await wait_until(lambda: judged(10), what="the fast sends judged")
        assert reports[-1].recent_changes == []
        await post_sends(broker, 10, timedelta(seconds=5), utc_now())
        await wait_until(lambda: len(receiver.webhook.calls) == 1, what="the webhook called")
        # Judged again since, still slow: still the one change.
        called_at = utc_now()
        await wait_until(lambda: judged(20, called_at), what="a later judgement")
        await wait_until(lambda: len(changes) == 1, what="the health.degraded event")

    report = reports[-1]
    assert report.overall is not None
    assert report.overall.health == "degraded"
    assert [c.health for c in report.recent_changes] == ["degraded"]
    (change,) = changes
    assert change.health == "degraded"
    assert change.campaign_api_id is None
    assert change.figures["sends"] == 20
    (call,) = receiver.webhook.calls
    assert call.idempotency_key == f"{change.change_id}:ops-hook"
    assert call.body["data"]["trigger"] == "braze_degraded"
    assert call.body["data"]["reason"] == change.reason
    assert "p95 sent→delivered" in change.reason


async def post_late_send(broker: Broker, send: str) -> None:
    """A `sent` that Braze stamped 11 minutes ago: past the default 10-minute timeout."""
    now = utc_now()
    sent_at = (now - timedelta(minutes=11)).isoformat()
    late = raw_postback(f"d-{send}", "sent", sent_at=sent_at, external_send_id=send)
    await broker.publish([outgoing_postback(late, now)])


async def test_a_timeout_while_braze_is_degraded_goes_to_the_degraded_rule(
    fallback_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    hook = receiver_handlers(receiver)["ops-hook"]
    path = write_rules_file(
        tmp_path / "rules.toml",
        rule("relay-hook", on=("timeout",), when_braze="degraded"),
        rule("ops-hook", on=("timeout",)),
        handlers={"relay-hook": hook, "ops-hook": hook},
        health=HEALTH,
    )
    settings = fallback_settings.model_copy(
        update={
            "rules": path,
            "sweep_interval": timedelta(milliseconds=50),
            # A late `sent` alone brings no Braze time past its deadline: the watermark
            # reaches it after this much silence.
            "max_lateness": timedelta(milliseconds=300),
        }
    )

    async def degraded() -> bool:
        overall = (await store.health.report()).overall
        return overall is not None and overall.health == "degraded"

    def handler_of(send: str) -> list[str]:
        return [
            c.body["data"]["handler"]
            for c in receiver.webhook.calls
            if c.body["data"]["external_send_id"] == send
        ]

    async with (
        running_worker(settings) as store,
        running_executor(settings, configure(read_rules_file(path))),
        publisher(settings) as broker,
    ):
        await post_late_send(broker, "late-healthy")  # one send: too few to judge
        await wait_until(lambda: bool(handler_of("late-healthy")), what="the first timeout handled")
        await post_sends(broker, 0, timedelta(seconds=5), utc_now())
        await wait_until(degraded, what="Braze judged degraded")
        await post_late_send(broker, "late-degraded")
        await wait_until(
            lambda: bool(handler_of("late-degraded")), what="the second timeout handled"
        )

    assert handler_of("late-healthy") == ["ops-hook"]
    assert handler_of("late-degraded") == ["relay-hook"]
    stamps = {
        c.body["data"]["external_send_id"]: c.body["data"]["braze_health"]
        for c in receiver.webhook.calls
    }
    assert stamps == {"late-healthy": "healthy", "late-degraded": "degraded"}

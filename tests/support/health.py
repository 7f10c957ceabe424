"""Sends as Braze reports them, and a deployment judged degraded, for the health tests."""

from datetime import UTC, datetime, timedelta

from tests.support.factories import postback
from txmail.core.health_settings import AutoBounds, HealthRules
from txmail.workers.store import open_store
from txmail.workers.store.protocol import TrackedEvent
from txmail.workers.timeouts import DeliveryTimeouts

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RULES = HealthRules(
    window=timedelta(minutes=5),
    min_sends=10,
    degraded_p95=timedelta(seconds=60),
    recovered_p95=timedelta(seconds=20),
)
BOUNDS = AutoBounds(min=timedelta(minutes=1), max=timedelta(minutes=30))


def learning() -> DeliveryTimeouts:
    """A default of 10 minutes, every campaign's timeout learned within BOUNDS."""
    return DeliveryTimeouts(timedelta(minutes=10), auto={None: BOUNDS})


def pieces(send: str, latency: float, campaign: str = "c") -> list[TrackedEvent]:
    """The `sent` and `delivered` of one send, delivered a minute before NOW, reaching
    txmail 1 s and 3 s after Braze's times."""
    delivered_at = NOW - timedelta(minutes=1)
    sent_at = delivered_at - timedelta(seconds=latency)
    ids = {"external_send_id": send, "campaign_api_id": campaign or None}
    return [
        postback(send, "sent", sent_at + timedelta(seconds=1), sent_at=sent_at.isoformat(), **ids),
        postback(
            send,
            "delivered",
            delivered_at + timedelta(seconds=3),
            delivered_at=delivered_at.isoformat(),
            **ids,
        ),
    ]


async def degraded(database_url: str) -> None:
    """Twenty sends of campaign "c" delivered in 2 minutes each, judged."""
    store = await open_store(database_url, learning())
    try:
        await store.apply([p for k in range(20) for p in pieces(f"send:{k}", 120)], NOW)
        await store.health.judge(NOW, RULES, timedelta(seconds=10))
    finally:
        await store.close()

"""The health loop in every worker: judge, publish the changes, refresh learned timeouts.

Every worker runs it; the health store lets one of them judge per ``every`` for the
whole deployment. A change is in the outbox before it is published: on the events
exchange as ``health.<health>`` and, for the rules, as a fallback request of trigger
``braze_<health>``, both confirmed, then marked published; one not confirmed is
published again after ``republish_after``, by whichever worker comes first. Its id is
the request's idempotency key, so the executor's call ledger calls a handler once.
"""

import asyncio
from datetime import datetime, timedelta
from typing import Final

import structlog

from txmail.core.broker import Broker, Outgoing
from txmail.core.command import Configuration
from txmail.core.errors import BrokerUnavailable
from txmail.core.events import HEALTH_CHANGE_TYPE, FallbackRequest, HealthChange, Trigger, utc_now
from txmail.core.health_settings import HealthRules
from txmail.core.stopping import pause
from txmail.workers import metrics
from txmail.workers.decisions import request_message
from txmail.workers.health.store import HealthStore
from txmail.workers.store.protocol import StoreUnavailable

log = structlog.get_logger(__name__)

PUBLISH_BATCH: Final = 100
# Judged this many times per window: often enough to notice within a fraction of it.
JUDGEMENTS_PER_WINDOW: Final = 30


def health_rules(config: Configuration) -> HealthRules:
    """The rules file's ``[health]``, or the defaults without one."""
    return HealthRules() if config.rules_file is None else config.rules_file.health


def judging_interval(rules: HealthRules) -> timedelta:
    return rules.window / JUDGEMENTS_PER_WINDOW


def as_fallback_request(change: HealthChange) -> FallbackRequest:
    """What the rules route: ``on = ["braze_degraded"]`` (or ``braze_recovered``)."""
    return FallbackRequest(
        idempotency_key=change.change_id,
        trigger=Trigger(f"braze_{change.health}"),
        dispatch_id=None,
        external_send_id=None,
        campaign_api_id=change.campaign_api_id,
        reason=change.reason,
        variables={k: v for k, v in change.figures.items() if v is not None},
        decided_at=change.at,
    )


def change_messages(change: HealthChange) -> list[Outgoing]:
    """The change itself, and the fallback request the rules route."""
    return [
        Outgoing.event(change, change.change_id, HEALTH_CHANGE_TYPE),
        request_message(as_fallback_request(change)),
    ]


class HealthMonitor:
    def __init__(
        self,
        health: HealthStore,
        broker: Broker,
        rules: HealthRules,
        republish_after: timedelta,
    ) -> None:
        self._health = health
        self._broker = broker
        self._rules = rules
        self._republish_after = republish_after
        self.every = judging_interval(rules)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick(utc_now())
            except StoreUnavailable as error:
                log.warning("health store unavailable, judging again later", error=str(error))
            except Exception:
                log.exception("judging Braze's health failed, judging again later")
            await pause(stop, self.every.total_seconds())

    async def tick(self, now: datetime) -> None:
        for change in await self._health.judge(now, self._rules, self.every):
            metrics.count_health_change(change.health, overall=change.campaign_api_id is None)
            log.warning(
                f"braze {change.health}",
                campaign_api_id=change.campaign_api_id,
                reason=change.reason,
                **change.figures,
            )
        if self._broker.is_ready:
            await self.publish(now)
        await self._health.refresh_learned()

    async def publish(self, now: datetime) -> None:
        while True:
            due = await self._health.claim_unpublished(now, self._republish_after, PUBLISH_BATCH)
            if not due:
                return
            try:
                await self._broker.publish([o for c in due for o in change_messages(c)])
            except BrokerUnavailable as error:
                log.warning(
                    "health changes not confirmed yet; published again later",
                    count=len(due),
                    error=str(error),
                )
                return
            await self._health.mark_published([c.change_id for c in due], utc_now())
            if len(due) < PUBLISH_BATCH:
                return

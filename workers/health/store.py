"""The deployment's one health state, in the database every worker shares.

- ``record``: each worker adds the pieces its batches tell about their sends
  (observations.py), merged per send: earliest time, largest lag, in any order.
- ``judge``: one worker at a time (the transaction's lock), at most once per ``every``
  for the whole deployment: reads the sends settled in the window, runs the pure
  evaluator for every scope, writes the new states and, in the same transaction, each
  change of health into ``health_changes``: an outbox, so a change is recorded exactly
  once and published after the commit (monitor.py), like a fallback decision.
- ``learned``: the timeouts learned for ``auto`` campaigns, updated by ``judge``.
"""

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel

from txmail.core.database import from_micros, to_micros
from txmail.core.events import HEALTH_CHANGE_PREFIX, HealthChange
from txmail.core.health_settings import HealthRules
from txmail.workers.health.database import Database, Statements, open_database
from txmail.workers.health.evaluate import Health, ScopeState, evaluate
from txmail.workers.health.figures import (
    NO_SENDS,
    OVERALL,
    SendSample,
    Settled,
    by_scope,
    scope_campaign,
)
from txmail.workers.health.learned import LEARN_FROM, learn_timeout
from txmail.workers.health.observations import SendObservation
from txmail.workers.health.tables import SETTLED_AT
from txmail.workers.timeouts import DeliveryTimeouts

# Sends settled longer ago than this are forgotten (a campaign learns from its latest
# LEARN_FROM deliveries of the last day), in batches of PURGE_BATCH per judgement.
KEEP_SENDS: Final = timedelta(days=1)
PURGE_BATCH: Final = 1000
RECENT_CHANGES: Final = 20


def _earliest(column: str) -> str:
    """The earlier of the row's time and the new one, either possibly missing."""
    old, new = f"health_sends.{column}", f"excluded.{column}"
    return (
        f"{column} = CASE WHEN {old} IS NULL THEN {new} WHEN {new} IS NULL THEN {old} "
        f"WHEN {new} < {old} THEN {new} ELSE {old} END"
    )


# Queries are built from constants only (S608).
_RECORD = f"""INSERT INTO health_sends
    (message_key, campaign, sent_at, delivered_at, failed_at, failure, timed_out_at, lag)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (message_key) DO UPDATE SET
    {_earliest("sent_at")}, {_earliest("delivered_at")}, {_earliest("timed_out_at")},
    failure = CASE WHEN excluded.failed_at IS NOT NULL AND (health_sends.failed_at IS NULL
        OR excluded.failed_at < health_sends.failed_at)
        THEN excluded.failure ELSE health_sends.failure END,
    {_earliest("failed_at")},
    lag = CASE WHEN health_sends.lag IS NULL OR excluded.lag > health_sends.lag
        THEN coalesce(excluded.lag, health_sends.lag) ELSE health_sends.lag END"""  # noqa: S608

_SETTLED_IN = f"""SELECT campaign, sent_at, delivered_at, failure, timed_out_at, lag
    FROM health_sends WHERE {SETTLED_AT} > ? AND {SETTLED_AT} <= ?"""  # noqa: S608

_LATEST_LATENCIES = """SELECT delivered_at - sent_at FROM health_sends
    WHERE campaign = ? AND delivered_at IS NOT NULL AND sent_at IS NOT NULL
    ORDER BY delivered_at DESC LIMIT ?"""

_PURGE = f"""DELETE FROM health_sends WHERE message_key IN (
    SELECT message_key FROM health_sends WHERE {SETTLED_AT} < ? LIMIT ?)"""  # noqa: S608


class ScopeReport(BaseModel):
    scope: str
    campaign_api_id: str | None
    health: Health
    since: datetime | None
    figures: dict[str, int | float | None]
    evaluated_at: datetime


class LearnedTimeout(BaseModel):
    campaign_api_id: str | None
    timeout_seconds: float
    sends: int
    learned_at: datetime


class HealthReport(BaseModel):
    """What ``txmail status --health`` and ``GET /v1/health/braze`` show."""

    overall: ScopeReport | None
    campaigns: list[ScopeReport]
    recent_changes: list[HealthChange]
    learned_timeouts: list[LearnedTimeout]


def _micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _sample(row: Sequence[Any]) -> SendSample:
    campaign, sent_at, delivered_at, failure, timed_out_at, lag = row
    if failure is not None:
        settled = Settled(failure)
    elif timed_out_at is not None:
        settled = Settled.TIMED_OUT
    else:
        settled = Settled.DELIVERED
    latency = None
    if settled is Settled.DELIVERED and sent_at is not None and delivered_at >= sent_at:
        latency = timedelta(microseconds=delivered_at - sent_at)
    return SendSample(
        campaign_api_id=campaign or None,
        settled=settled,
        latency=latency,
        lag=None if lag is None else timedelta(microseconds=lag),
    )


def change_id(scope: str, at: datetime) -> str:
    """Stable for one change: its fallback request's idempotency key."""
    digest = hashlib.sha256(f"{scope}\n{at.isoformat()}".encode()).hexdigest()
    return HEALTH_CHANGE_PREFIX + digest[:32]


class HealthStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def record(self, observations: Sequence[SendObservation]) -> None:
        if not observations:
            return
        async with self._db.transaction() as db:
            await db.executemany(
                _RECORD,
                [
                    (
                        o.message_key,
                        o.campaign,
                        _micros(o.sent_at),
                        _micros(o.delivered_at),
                        _micros(o.failed_at),
                        o.failure,
                        _micros(o.timed_out_at),
                        None if o.lag is None else o.lag // timedelta(microseconds=1),
                    )
                    for o in observations
                ],
            )

    async def judge(
        self,
        now: datetime,
        rules: HealthRules,
        timeouts: DeliveryTimeouts,
        every: timedelta,
    ) -> list[HealthChange]:
        """Judge every scope, unless another worker did less than ``every`` ago; returns
        the changes of health made now (already in the outbox)."""
        async with self._db.transaction(one_at_a_time=True) as db:
            last = await db.fetch("SELECT evaluated_at FROM health_state WHERE scope = ?", OVERALL)
            if last and now - from_micros(last[0][0]) < every:
                return []
            rows = await db.fetch(_SETTLED_IN, to_micros(now - rules.window), to_micros(now))
            samples = [_sample(row) for row in rows]
            states = {
                scope: ScopeState(Health(health), _time(since), _time(calm_since))
                for scope, health, since, calm_since in await db.fetch(
                    "SELECT scope, health, since, calm_since FROM health_state"
                )
            }
            scoped = {scope: NO_SENDS for scope in [OVERALL, *states]} | by_scope(samples)
            changes = []
            for scope, figures in sorted(scoped.items()):
                state, why = evaluate(states.get(scope, ScopeState()), figures, rules, now)
                await self._write_state(db, scope, state, figures.as_json(), now)
                if why is not None:
                    changes.append(_change(scope, state, why, figures.as_json(), now))
            await db.executemany(
                "INSERT INTO health_changes (change_id, at, body, publish_after) "
                "VALUES (?, ?, ?, ?)",
                [
                    (c.change_id, to_micros(now), c.model_dump_json(), to_micros(now))
                    for c in changes
                ],
            )
            campaigns = {s.campaign_api_id or "" for s in samples}
            await self._learn(db, campaigns, rules, timeouts, now)
            await db.execute(_PURGE, to_micros(now - KEEP_SENDS), PURGE_BATCH)
        return changes

    @staticmethod
    async def _write_state(
        db: Statements,
        scope: str,
        state: ScopeState,
        figures: dict[str, int | float | None],
        now: datetime,
    ) -> None:
        await db.execute(
            """INSERT INTO health_state (scope, health, since, calm_since, figures, evaluated_at)
            VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET
            health = excluded.health, since = excluded.since,
            calm_since = excluded.calm_since, figures = excluded.figures,
            evaluated_at = excluded.evaluated_at""",
            scope,
            state.health.value,
            _micros(state.since),
            _micros(state.calm_since),
            json.dumps(figures),
            to_micros(now),
        )

    @staticmethod
    async def _learn(
        db: Statements,
        campaigns: set[str],
        rules: HealthRules,
        timeouts: DeliveryTimeouts,
        now: datetime,
    ) -> None:
        """Learn again the timeout of each ``auto`` campaign that had sends now."""
        for campaign in sorted(campaigns):
            bounds = timeouts.auto_bounds(campaign or None)
            if bounds is None:
                continue
            rows = await db.fetch(_LATEST_LATENCIES, campaign, LEARN_FROM)
            latencies = [timedelta(microseconds=latency) for (latency,) in rows]
            learned = learn_timeout(latencies, bounds, timeouts.default, rules.min_sends)
            await db.execute(
                """INSERT INTO learned_timeouts (campaign, timeout, sends, learned_at)
                VALUES (?, ?, ?, ?) ON CONFLICT (campaign) DO UPDATE SET
                timeout = excluded.timeout, sends = excluded.sends,
                learned_at = excluded.learned_at""",
                campaign,
                learned // timedelta(microseconds=1),
                len(latencies),
                to_micros(now),
            )

    async def claim_unpublished(
        self, now: datetime, republish_after: timedelta, limit: int
    ) -> list[HealthChange]:
        """Changes whose publish is due, leased to this caller for ``republish_after``."""
        async with self._db.transaction() as db:
            rows = await db.fetch(
                """UPDATE health_changes SET publish_after = ? WHERE change_id IN (
                    SELECT change_id FROM health_changes
                    WHERE published_at IS NULL AND publish_after <= ?
                    ORDER BY publish_after LIMIT ?) RETURNING body""",
                to_micros(now + republish_after),
                to_micros(now),
                limit,
            )
        changes = [HealthChange.model_validate_json(body) for (body,) in rows]
        return sorted(changes, key=lambda c: c.at)

    async def mark_published(self, change_ids: Sequence[str], now: datetime) -> None:
        async with self._db.transaction() as db:
            await db.executemany(
                "UPDATE health_changes SET published_at = ? "
                "WHERE change_id = ? AND published_at IS NULL",
                [(to_micros(now), change) for change in change_ids],
            )

    async def learned(self) -> dict[str, timedelta]:
        """The learned timeouts by campaign ('' for sends without one)."""
        async with self._db.reading() as db:
            rows = await db.fetch("SELECT campaign, timeout FROM learned_timeouts")
        return {campaign: timedelta(microseconds=timeout) for campaign, timeout in rows}

    async def report(self) -> HealthReport:
        async with self._db.reading() as db:
            states = await db.fetch(
                "SELECT scope, health, since, figures, evaluated_at FROM health_state "
                "ORDER BY scope"
            )
            changes = await db.fetch(
                "SELECT body FROM health_changes ORDER BY at DESC LIMIT ?", RECENT_CHANGES
            )
            learned = await db.fetch(
                "SELECT campaign, timeout, sends, learned_at FROM learned_timeouts "
                "ORDER BY campaign"
            )
        scopes = [
            ScopeReport(
                scope=scope,
                campaign_api_id=scope_campaign(scope),
                health=Health(health),
                since=_time(since),
                figures=json.loads(figures),
                evaluated_at=from_micros(evaluated_at),
            )
            for scope, health, since, figures, evaluated_at in states
        ]
        return HealthReport(
            overall=next((s for s in scopes if s.scope == OVERALL), None),
            campaigns=[s for s in scopes if s.scope != OVERALL],
            recent_changes=[HealthChange.model_validate_json(body) for (body,) in changes],
            learned_timeouts=[
                LearnedTimeout(
                    campaign_api_id=campaign or None,
                    timeout_seconds=timeout / 1_000_000,
                    sends=sends,
                    learned_at=from_micros(at),
                )
                for campaign, timeout, sends, at in learned
            ],
        )

    async def close(self) -> None:
        await self._db.close()


def _change(
    scope: str,
    state: ScopeState,
    why: str,
    figures: dict[str, int | float | None],
    now: datetime,
) -> HealthChange:
    campaign = scope_campaign(scope)
    who = "Braze" if campaign is None else f"Braze, for campaign {campaign},"
    health = "degraded" if state.health is Health.DEGRADED else "recovered"
    return HealthChange(
        change_id=change_id(scope, now),
        health=health,
        campaign_api_id=campaign,
        at=now,
        reason=f"{who} {health}: {why}",
        figures=figures,
    )


def open_health_store(url: str, *, read_only: bool = False) -> HealthStore:
    """The health store on TXMAIL_DATABASE_URL (tables made by the store's migrations)."""
    return HealthStore(open_database(url, read_only=read_only))

"""The deployment's one health state, in the database every worker shares.

- ``sends_recorded``: written in the store's own statement, what a batch (``apply``) or
  a sweep (``claim_due``) tells about its sends (observations.py), merged per send:
  earliest time, largest lag, in any order. Committed with the batch, so recorded
  before the ack, and applied again with it.
- ``judge``: one worker at a time (a lock on one key), at most once per ``every`` for
  the whole deployment: reads the sends settled in the window, runs the pure
  evaluator for every scope, writes the new states and, in the same transaction, each
  change of health into ``health_changes``: an outbox, so a change is recorded exactly
  once and published after the commit (monitor.py), like a fallback decision.
- ``learned``: the timeouts learned for ``auto`` campaigns, updated by ``judge``.
- ``degraded_scopes``: in the sweep's transaction that claims deadlines, the health
  each timeout's request is stamped with.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, TypeVar

from pydantic import BaseModel

from txmail.core.events import HEALTH_CHANGE_PREFIX, HealthChange
from txmail.core.health_settings import HealthRules
from txmail.core.sql import Database, Insert, Outbox, Sql, optional_time
from txmail.workers.health.evaluate import DegradedScopes, Health, ScopeState, evaluate
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
from txmail.workers.health.tables import (
    HEALTH_CHANGES,
    HEALTH_SENDS,
    HEALTH_STATE,
    LEARNED_TIMEOUTS,
    SETTLED_AT,
)
from txmail.workers.timeouts import DeliveryTimeouts

T = TypeVar("T")

# Sends settled longer ago than this are forgotten (a campaign learns from its latest
# LEARN_FROM deliveries of the last day), in batches of PURGE_BATCH per judgement.
KEEP_SENDS: Final = timedelta(days=1)
PURGE_BATCH: Final = 1000
RECENT_CHANGES: Final = 20
_MICROSECOND: Final = timedelta(microseconds=1)


def _earliest(column: str) -> str:
    """The earlier of the row's time and the new one, either possibly missing."""
    old, new = f"health_sends.{column}", f"excluded.{column}"
    return (
        f"{column} = CASE WHEN {old} IS NULL THEN {new} WHEN {new} IS NULL THEN {old} "
        f"WHEN {new} < {old} THEN {new} ELSE {old} END"
    )


# Queries are built from constants only (S608).
_MERGE_SEND = f"""ON CONFLICT (message_key) DO UPDATE SET
    {_earliest("sent_at")}, {_earliest("delivered_at")}, {_earliest("timed_out_at")},
    failure = CASE WHEN excluded.failed_at IS NOT NULL AND (health_sends.failed_at IS NULL
        OR excluded.failed_at < health_sends.failed_at)
        THEN excluded.failure ELSE health_sends.failure END,
    {_earliest("failed_at")},
    lag = CASE WHEN health_sends.lag IS NULL OR excluded.lag > health_sends.lag
        THEN coalesce(excluded.lag, health_sends.lag) ELSE health_sends.lag END"""

_SETTLED_IN = f"""SELECT campaign, sent_at, delivered_at, failure, timed_out_at, lag
    FROM health_sends WHERE {SETTLED_AT} > ? AND {SETTLED_AT} <= ?"""  # noqa: S608

_LATEST_DELIVERED = """SELECT sent_at, delivered_at FROM health_sends
    WHERE campaign = ? AND delivered_at IS NOT NULL AND sent_at IS NOT NULL
    ORDER BY delivered_at DESC LIMIT ?"""

# Only rows nobody holds (``SKIP LOCKED``): a batch writing an old send never waits.
_PURGE = f"""DELETE FROM health_sends WHERE message_key IN (
    SELECT message_key FROM health_sends WHERE {SETTLED_AT} < ? LIMIT ?{{skip_locked}})"""  # noqa: S608

_WRITE_STATE = "ON CONFLICT (scope) DO UPDATE SET " + ", ".join(
    f"{c.name} = excluded.{c.name}" for c in HEALTH_STATE[1:]
)
# Changes are recorded in the judging transaction and published after it (monitor.py).
_CHANGES = Outbox("health_changes", "change_id", "body", "published_at")
_WRITE_LEARNED = "ON CONFLICT (campaign) DO UPDATE SET " + ", ".join(
    f"{c.name} = excluded.{c.name}" for c in LEARNED_TIMEOUTS[1:]
)
# Every worker judges now and then; one at a time, across processes.
_JUDGING_KEY: Final = "txmail.health.judging"


class Reads(Protocol):
    """The store's way to read: the schema checked, nothing created."""

    async def __call__(self, work: Callable[[Sql], Awaitable[T]]) -> T: ...


def sends_recorded(observations: Sequence[SendObservation]) -> Insert:
    """A batch's pieces (one per send, in key order), merged into ``health_sends``."""
    return Insert(
        "health_sends",
        HEALTH_SENDS,
        [
            (
                o.message_key,
                o.campaign,
                o.sent_at,
                o.delivered_at,
                o.failed_at,
                o.failure,
                o.timed_out_at,
                None if o.lag is None else o.lag // _MICROSECOND,
            )
            for o in observations
        ],
        _MERGE_SEND,
    )


async def degraded_scopes(db: Sql) -> DegradedScopes:
    """What the deployment last judged degraded, read in the caller's transaction."""
    rows = await db.fetch("SELECT scope FROM health_state WHERE health = ?", Health.DEGRADED.value)
    return DegradedScopes(frozenset(scope for (scope,) in rows))


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


def _sample(db: Sql, row: Sequence[Any]) -> SendSample:
    campaign, sent_at, delivered_at, failure, timed_out_at, lag = row
    if failure is not None:
        settled = Settled(failure)
    elif timed_out_at is not None:
        settled = Settled.TIMED_OUT
    else:
        settled = Settled.DELIVERED
    latency = None
    if settled is Settled.DELIVERED and sent_at is not None:
        took = db.time(delivered_at) - db.time(sent_at)
        latency = took if took >= timedelta(0) else None
    return SendSample(
        campaign_api_id=campaign or None,
        settled=settled,
        latency=latency,
        lag=None if lag is None else lag * _MICROSECOND,
    )


def change_id(scope: str, at: datetime) -> str:
    """Stable for one change: its fallback request's idempotency key."""
    digest = hashlib.sha256(f"{scope}\n{at.isoformat()}".encode()).hexdigest()
    return HEALTH_CHANGE_PREFIX + digest[:32]


class HealthStore:
    """Over the store's database, read the store's way; ``timeouts`` are the store's,
    whose learned values ``refresh_learned`` keeps as the deployment last learned them."""

    def __init__(self, database: Database, read: Reads, timeouts: DeliveryTimeouts) -> None:
        self._database = database
        self._read = read
        self._timeouts = timeouts

    async def judge(
        self, now: datetime, rules: HealthRules, every: timedelta
    ) -> list[HealthChange]:
        """Judge every scope, unless another worker did less than ``every`` ago; returns
        the changes of health made now (already in the outbox)."""

        async def work(db: Sql) -> list[HealthChange]:
            await db.lock_keys([_JUDGING_KEY])
            last = await db.fetch("SELECT evaluated_at FROM health_state WHERE scope = ?", OVERALL)
            if last and now - db.time(last[0][0]) < every:
                return []
            rows = await db.fetch(_SETTLED_IN, now - rules.window, now)
            samples = [_sample(db, row) for row in rows]
            states = {
                scope: ScopeState(
                    Health(health), optional_time(db, since), optional_time(db, calm_since)
                )
                for scope, health, since, calm_since in await db.fetch(
                    "SELECT scope, health, since, calm_since FROM health_state ORDER BY scope"
                )
            }
            scoped = {scope: NO_SENDS for scope in [OVERALL, *states]} | by_scope(samples)
            written, changes = [], []
            for scope, figures in sorted(scoped.items()):
                state, why = evaluate(states.get(scope, ScopeState()), figures, rules, now)
                figured = figures.as_json()
                written.append(
                    (
                        scope,
                        state.health.value,
                        state.since,
                        state.calm_since,
                        json.dumps(figured),
                        now,
                    )
                )
                if why is not None:
                    changes.append(_change(scope, state, why, figured, now))
            await db.insert_many(
                Insert("health_state", HEALTH_STATE, written, _WRITE_STATE),
                Insert(
                    "health_changes",
                    HEALTH_CHANGES,
                    [(c.change_id, now, c.model_dump_json(), None, now) for c in changes],
                ),
            )
            await self._learn(db, {s.campaign_api_id or "" for s in samples}, rules, now)
            purge = _PURGE.format(skip_locked=db.dialect.skip_locked)
            await db.execute(purge, now - KEEP_SENDS, PURGE_BATCH)
            return changes

        return await self._database.transaction(work)

    async def _learn(self, db: Sql, campaigns: set[str], rules: HealthRules, now: datetime) -> None:
        """Learn again the timeout of each ``auto`` campaign that had sends now."""
        learned = []
        for campaign in sorted(campaigns):
            bounds = self._timeouts.auto_bounds(campaign or None)
            if bounds is None:
                continue
            rows = await db.fetch(_LATEST_DELIVERED, campaign, LEARN_FROM)
            latencies = [db.time(delivered) - db.time(sent) for sent, delivered in rows]
            timeout = learn_timeout(latencies, bounds, self._timeouts.default, rules.min_sends)
            learned.append((campaign, timeout // _MICROSECOND, len(latencies), now))
        await db.insert_many(Insert("learned_timeouts", LEARNED_TIMEOUTS, learned, _WRITE_LEARNED))

    async def claim_unpublished(
        self, now: datetime, republish_after: timedelta, limit: int
    ) -> list[HealthChange]:
        """Changes whose publish is due, leased to this caller for ``republish_after``."""
        claimed = await _CHANGES.claim(self._database, now, republish_after, limit)
        return sorted((HealthChange.model_validate_json(b) for _, b in claimed), key=lambda c: c.at)

    async def mark_published(self, change_ids: Sequence[str], now: datetime) -> None:
        await _CHANGES.mark_published(self._database, change_ids, now)

    async def refresh_learned(self) -> None:
        """The learned timeouts by campaign, as the deployment last learned them."""

        async def work(db: Sql) -> dict[str, timedelta]:
            rows = await db.fetch("SELECT campaign, timeout FROM learned_timeouts")
            return {campaign: timeout * _MICROSECOND for campaign, timeout in rows}

        self._timeouts.learned.replace(await self._read(work))

    async def report(self) -> HealthReport:
        async def work(db: Sql) -> HealthReport:
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
                    since=optional_time(db, since),
                    figures=json.loads(figures),
                    evaluated_at=db.time(evaluated_at),
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
                        learned_at=db.time(at),
                    )
                    for campaign, timeout, sends, at in learned
                ],
            )

        return await self._read(work)


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

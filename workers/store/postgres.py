"""The PostgreSQL store: many workers against one database.

Writers lock the rows they change (``FOR UPDATE``, keys in sorted order so two
workers never wait on each other in a circle); the sweeper and the publish relay
take only rows nobody holds (``SKIP LOCKED``), so replicas share the work without
waiting and never claim the same row. A late `delivered` and the sweeper's claim
meet on the message's row lock: whoever comes second sees what the first decided.
"""

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from txmail.core.database import (
    POSTGRES_MISCONFIGURED,
    POSTGRES_UNAVAILABLE,
    apply_postgres_migrations,
)
from txmail.core.errors import ConfigError
from txmail.core.events import NUL, FallbackRequest
from txmail.core.readable import readable
from txmail.workers.state import Message, claim_deadline
from txmail.workers.store.migrations import POSTGRES, RECENT_FAILURES, require_migrated
from txmail.workers.store.protocol import (
    AttemptCount,
    Delivery,
    FailureSummary,
    LatestAttempt,
    MessageCount,
    MessageView,
    PendingDeadlines,
    PendingRequest,
    StoreCounts,
    StoreUnavailable,
    TimelineEntry,
    TrackedEvent,
)
from txmail.workers.store.rows import (
    MessageRow,
    evolve_all,
    failure_summary,
    message_keys,
    to_rows,
    view,
)
from txmail.workers.timeouts import DeliveryTimeouts
from txmail.workers.watermark import WorkerProgress

T = TypeVar("T")
Db: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


class _RowsVanished(Exception):
    """Rows deleted (purged) between inserting and locking them: insert them again."""


# Lost races between writers: the transaction is simply run again.
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, _RowsVanished)
_ATTEMPTS = 5

_WRITE_ROWS = """
UPDATE messages AS m SET
    dispatch_id = u.dispatch_id,
    external_send_id = u.external_send_id,
    campaign_api_id = u.campaign_api_id,
    outcome = u.outcome,
    reason = u.reason,
    deadline = u.deadline,
    decision_trigger = u.decision_trigger,
    summary = u.summary,
    decision_request = coalesce(m.decision_request, u.request),
    publish_after = coalesce(
        m.publish_after, CASE WHEN u.request IS NULL THEN NULL ELSE $11::timestamptz END
    ),
    updated_at = $12::timestamptz
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::timestamptz[], $8::text[], $9::text[], $10::text[])
    AS u(message_key, dispatch_id, external_send_id, campaign_api_id, outcome, reason,
         deadline, decision_trigger, summary, request)
WHERE m.message_key = u.message_key
"""

_FIND = """SELECT message_key, outcome, reason, deadline, summary, decision_request,
    decision_published_at, created_at, updated_at FROM messages """
_FIND_BY_DISPATCH_ID = _FIND + "WHERE dispatch_id = $1 ORDER BY created_at LIMIT 1"
_FIND_BY_EXTERNAL_SEND_ID = _FIND + "WHERE external_send_id = $1 ORDER BY created_at LIMIT 1"


class PostgresStore:
    def __init__(
        self,
        url: str,
        timeouts: DeliveryTimeouts,
        republish_after: timedelta,
        pool_size: int = 4,
    ) -> None:
        self._url = url
        self._timeouts = timeouts
        self._republish_after = republish_after
        self._pool_size = pool_size
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self._pool_size, command_timeout=60
            )
        except POSTGRES_MISCONFIGURED as error:
            # Waiting will not make these work: say so, instead of a traceback or a
            # worker retrying for ever.
            raise ConfigError(f"TXMAIL_DATABASE_URL: PostgreSQL refused it: {error}") from None
        except POSTGRES_UNAVAILABLE as error:
            raise StoreUnavailable(f"PostgreSQL: {readable(error)}") from error

    async def open_for_reading(self) -> None:
        await self.open()  # a pool of connections, which creates nothing

    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks; returns their versions."""
        try:
            return await self._transaction(self._migrate)
        except asyncpg.InsufficientPrivilegeError as error:
            raise ConfigError(
                f"TXMAIL_DATABASE_URL: this user may not create the txmail tables: {error}"
            ) from None

    @staticmethod
    async def _migrate(db: Db) -> list[int]:
        return await apply_postgres_migrations(
            db, "schema_migrations", "txmail.migrations:", POSTGRES
        )

    @staticmethod
    async def _require_migrated(db: Db) -> None:
        """Readers check the schema and never create it (their user may only SELECT)."""
        try:
            version = await db.fetchval("SELECT max(version) FROM schema_migrations")
        except asyncpg.UndefinedTableError:
            version = None
        require_migrated(version, POSTGRES)

    async def _transaction(self, work: Callable[[Db], Awaitable[T]]) -> T:
        if self._pool is None:
            raise StoreUnavailable("PostgreSQL store is not open")
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self._pool.acquire() as db, db.transaction():
                    return await work(db)
            except _RETRYABLE as error:
                if attempt == _ATTEMPTS:
                    raise StoreUnavailable(f"PostgreSQL: {readable(error)}") from error
            except POSTGRES_UNAVAILABLE as error:
                raise StoreUnavailable(f"PostgreSQL: {readable(error)}") from error
        raise AssertionError("unreachable")

    # --- writing ---------------------------------------------------------------

    async def apply(self, events: Sequence[TrackedEvent], now: datetime) -> list[PendingRequest]:
        async def work(db: Db) -> list[PendingRequest]:
            await self._insert_events(db, events)
            keys = message_keys(events)
            await db.execute(
                "INSERT INTO messages (message_key, created_at, updated_at) "
                "SELECT unnest($1::text[]), $2, $2 ON CONFLICT DO NOTHING",
                keys,
                now,
            )
            locked = await db.fetch(
                "SELECT message_key, summary FROM messages WHERE message_key = ANY($1::text[]) "
                "ORDER BY message_key FOR UPDATE",
                keys,
            )
            if len(locked) != len(keys):
                # The purge deleted one while we waited for its lock; the update below
                # would then write nothing, and the event would be acked but lost.
                raise _RowsVanished(sorted(set(keys) - {r["message_key"] for r in locked}))
            loaded = {r["message_key"]: r["summary"] for r in locked}
            rows, decided = to_rows(evolve_all(loaded, events, now), self._timeouts)
            await self._write_rows(db, rows, now)
            return decided

        return await self._transaction(work)

    @staticmethod
    async def _insert_events(db: Db, events: Sequence[TrackedEvent]) -> None:
        # One row per event id (a batch can hold redeliveries), in id order for lock order.
        earliest: dict[str, TrackedEvent] = {}
        for event in events:
            kept = earliest.get(event.event_id)
            if kept is None or event.received_at < kept.received_at:
                earliest[event.event_id] = event
        unique = [earliest[k] for k in sorted(earliest)]
        await db.execute(
            """INSERT INTO events (event_id, message_key, kind, label, received_at, body)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                 $5::timestamptz[], $6::text[])
            ON CONFLICT (event_id) DO UPDATE SET received_at = EXCLUDED.received_at
                WHERE EXCLUDED.received_at < events.received_at""",
            [e.event_id for e in unique],
            [e.message_key for e in unique],
            [e.kind for e in unique],
            [e.label for e in unique],
            [e.received_at for e in unique],
            [e.body for e in unique],
        )

    async def _write_rows(self, db: Db, rows: Sequence[MessageRow], now: datetime) -> None:
        await db.execute(
            _WRITE_ROWS,
            [r.key for r in rows],
            [r.dispatch_id for r in rows],
            [r.external_send_id for r in rows],
            [r.campaign_api_id for r in rows],
            [r.outcome for r in rows],
            [r.reason for r in rows],
            [r.deadline for r in rows],
            [r.decision_trigger for r in rows],
            [r.summary for r in rows],
            [r.request for r in rows],
            now + self._republish_after,
            now,
        )

    async def claim_due(
        self, now: datetime, limit: int, due_by: datetime | None = None
    ) -> list[PendingRequest]:
        async def work(db: Db) -> list[PendingRequest]:
            due = await db.fetch(
                "SELECT summary FROM messages WHERE deadline <= $1 ORDER BY deadline LIMIT $2 "
                "FOR UPDATE SKIP LOCKED",
                now if due_by is None else due_by,
                limit,
            )
            changed = [
                claim_deadline(
                    Message.model_validate_json(r["summary"]), self._timeouts, now, due_by
                )
                for r in due
            ]
            rows, decided = to_rows(changed, self._timeouts)
            await self._write_rows(db, rows, now)
            return decided

        return await self._transaction(work)

    async def report_progress(
        self, progress: WorkerProgress, forget_before: datetime
    ) -> list[WorkerProgress]:
        async def work(db: Db) -> list[asyncpg.Record]:
            await db.execute(
                """INSERT INTO worker_progress
                    (worker_id, heartbeat, applied_until, event_time, heard_at, holding)
                VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (worker_id) DO UPDATE SET heartbeat = EXCLUDED.heartbeat,
                    applied_until = EXCLUDED.applied_until,
                    event_time = EXCLUDED.event_time, heard_at = EXCLUDED.heard_at,
                    holding = EXCLUDED.holding""",
                progress.worker_id,
                progress.heartbeat,
                progress.applied_until,
                progress.event_time,
                progress.heard_at,
                progress.holding,
            )
            await db.execute("DELETE FROM worker_progress WHERE heartbeat < $1", forget_before)
            return await db.fetch(
                "SELECT worker_id, heartbeat, applied_until, event_time, heard_at, holding "
                "FROM worker_progress"
            )

        rows = await self._transaction(work)
        return [
            WorkerProgress(
                r["worker_id"],
                r["heartbeat"],
                r["applied_until"],
                r["event_time"],
                r["heard_at"],
                r["holding"],
            )
            for r in rows
        ]

    async def claim_unpublished(self, now: datetime, limit: int) -> list[PendingRequest]:
        async def work(db: Db) -> list[asyncpg.Record]:
            return await db.fetch(
                """UPDATE messages SET publish_after = $1
                WHERE message_key IN (
                    SELECT message_key FROM messages
                    WHERE publish_after <= $2 AND decision_published_at IS NULL
                    ORDER BY publish_after LIMIT $3 FOR UPDATE SKIP LOCKED)
                RETURNING message_key, decision_request""",
                now + self._republish_after,
                now,
                limit,
            )

        claimed = await self._transaction(work)
        return [
            PendingRequest(
                r["message_key"], FallbackRequest.model_validate_json(r["decision_request"])
            )
            for r in claimed
        ]

    async def mark_published(self, message_keys: Sequence[str], now: datetime) -> None:
        async def work(db: Db) -> None:
            await db.execute(
                "UPDATE messages SET decision_published_at = $2 "
                "WHERE message_key = ANY($1::text[]) AND decision_published_at IS NULL",
                list(message_keys),
                now,
            )

        await self._transaction(work)

    async def purge(self, created_before: datetime, limit: int) -> int:
        async def work(db: Db) -> int:
            purged = await db.fetch(
                """WITH doomed AS (
                    SELECT message_key FROM messages WHERE created_at < $1
                    AND deadline IS NULL
                    AND (decision_request IS NULL OR decision_published_at IS NOT NULL)
                    LIMIT $2 FOR UPDATE SKIP LOCKED
                ), events_gone AS (
                    DELETE FROM events WHERE message_key IN (SELECT message_key FROM doomed)
                )
                DELETE FROM messages WHERE message_key IN (SELECT message_key FROM doomed)
                RETURNING message_key""",
                created_before,
                limit,
            )
            return len(purged)

        return await self._transaction(work)

    # --- reading ---------------------------------------------------------------

    async def find(
        self, *, dispatch_id: str | None = None, external_send_id: str | None = None
    ) -> MessageView | None:
        wanted = dispatch_id or external_send_id
        if wanted is None or NUL in wanted:
            return None  # no stored id has one, and PostgreSQL would refuse the query

        async def work(db: Db) -> MessageView | None:
            await self._require_migrated(db)
            query = _FIND_BY_DISPATCH_ID if dispatch_id else _FIND_BY_EXTERNAL_SEND_ID
            row = await db.fetchrow(query, wanted)
            if row is None or row["summary"] is None:
                return None
            timeline = await db.fetch(
                "SELECT event_id, kind, label, received_at, body FROM events "
                "WHERE message_key = $1 ORDER BY received_at, event_id",
                row["message_key"],
            )
            return view(
                Message.model_validate_json(row["summary"]),
                outcome=row["outcome"],
                reason=row["reason"],
                deadline=row["deadline"],
                request=row["decision_request"],
                published_at=row["decision_published_at"],
                created_at=row["created_at"],
                updated_at=row["updated_at"],
                timeline=[
                    TimelineEntry(
                        event_id=e["event_id"],
                        kind=e["kind"],
                        label=e["label"],
                        received_at=e["received_at"],
                        body=json.loads(e["body"]),
                    )
                    for e in timeline
                ],
            )

        return await self._transaction(work)

    async def counts(self) -> StoreCounts:
        async def work(db: Db) -> asyncpg.Record | None:
            await self._require_migrated(db)
            return await db.fetchrow(
                """SELECT
                    (SELECT count(*) FROM messages),
                    (SELECT count(*) FROM events),
                    (SELECT count(*) FROM messages WHERE decision_trigger IS NOT NULL),
                    (SELECT count(*) FROM messages
                        WHERE decision_request IS NOT NULL AND decision_published_at IS NULL),
                    (SELECT count(*) FROM messages WHERE deadline IS NOT NULL),
                    (SELECT count(*) FROM messages WHERE outcome = 'premature_fallback')"""
            )

        row = await self._transaction(work)
        if row is None:
            raise StoreUnavailable("PostgreSQL returned no counts")
        return StoreCounts(*row)

    async def _read(self, query: str, *arguments: object) -> list[asyncpg.Record]:
        async def work(db: Db) -> list[asyncpg.Record]:
            await self._require_migrated(db)
            return await db.fetch(query, *arguments)

        return await self._transaction(work)

    async def message_counts(self, since: datetime) -> list[MessageCount]:
        rows = await self._read(
            "SELECT outcome, decision_trigger, count(*) FROM messages WHERE created_at >= $1 "
            "GROUP BY outcome, decision_trigger",
            since,
        )
        return [MessageCount(*row) for row in rows]

    async def attempt_counts(self, since: datetime) -> list[AttemptCount]:
        rows = await self._read(
            "SELECT body::jsonb ->> 'handler', body::jsonb ->> 'outcome', count(*) FROM events "
            "WHERE kind = 'fallback_attempt' AND received_at >= $1 GROUP BY 1, 2",
            since,
        )
        return [AttemptCount(*row) for row in rows]

    async def latest_attempts(self, since: datetime) -> list[LatestAttempt]:
        rows = await self._read(
            """SELECT DISTINCT ON (handler) handler, outcome, detail, received_at FROM (
                SELECT body::jsonb ->> 'handler' AS handler, body::jsonb ->> 'outcome' AS outcome,
                    body::jsonb ->> 'detail' AS detail, received_at, event_id
                FROM events WHERE kind = 'fallback_attempt' AND received_at >= $1) AS a
            WHERE handler IS NOT NULL ORDER BY handler, received_at DESC, event_id DESC""",
            since,
        )
        return [
            LatestAttempt(r["handler"], r["outcome"], r["detail"] or "", r["received_at"])
            for r in rows
        ]

    async def pending_deadlines(self) -> PendingDeadlines:
        [row] = await self._read(
            "SELECT count(*), min(deadline) FROM messages WHERE deadline IS NOT NULL"
        )
        return PendingDeadlines(*row)

    async def recent_failures(
        self, limit: int, campaign_api_id: str | None = None, trigger: str | None = None
    ) -> list[FailureSummary]:
        if NUL in (campaign_api_id or "") + (trigger or ""):
            return []  # no stored id has one, and PostgreSQL would refuse the query
        rows = await self._read(
            RECENT_FAILURES
            + " AND ($1::text IS NULL OR campaign_api_id = $1)"
            + " AND ($2::text IS NULL OR decision_trigger = $2)"
            + " ORDER BY updated_at DESC LIMIT $3",
            campaign_api_id,
            trigger,
            limit,
        )
        return [failure_summary(tuple(row), row["updated_at"]) for row in rows]

    async def deliveries(self, since: datetime, limit: int) -> list[Delivery]:
        rows = await self._read(
            """SELECT summary::jsonb #>> '{statuses,sent,timestamps,sent_at}',
                summary::jsonb #>> '{statuses,delivered,timestamps,delivered_at}'
            FROM messages WHERE created_at >= $1 AND outcome = 'delivered'
            ORDER BY created_at DESC LIMIT $2""",
            since,
            limit,
        )
        return [Delivery(*row) for row in rows]

    async def ping(self) -> None:
        await self._transaction(self._require_migrated)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

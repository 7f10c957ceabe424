"""The store's algorithm, once, over either database (``txmail.core.sql``).

Writers lock what they change: a batch locks its messages' keys (a row or not yet)
and their rows, in one order, so two workers never wait on each other in a circle; the
sweeper, the publish relay and the purge take only rows nobody holds (``SKIP LOCKED``
on PostgreSQL), so replicas share the work without waiting and never claim the same
row. A late `delivered` and the sweeper's claim meet on the message's row lock: whoever
comes second sees what the first decided. On SQLite every write transaction holds the
whole file, which gives the same.
"""

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from txmail.core.events import NUL, FallbackRequest
from txmail.core.sql import Database, Insert, Outbox, Sql, optional_time, schema_version
from txmail.workers.health.observations import observe
from txmail.workers.health.store import HealthStore, degraded_scopes, sends_recorded
from txmail.workers.metrics import observe_braze_delivery
from txmail.workers.state import Decision, Message
from txmail.workers.store.migrations import (
    EVENTS,
    MESSAGES,
    RECENT_FAILURES,
    WORKER_PROGRESS,
    columns,
    migrations,
    require_migrated,
)
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
    Tally,
    TimelineEntry,
    TrackedEvent,
)
from txmail.workers.store.rows import (
    MessageRow,
    claimed_rows,
    evolve_all,
    failure_summary,
    message_keys,
    to_rows,
    view,
)
from txmail.workers.timeouts import DeliveryTimeouts
from txmail.workers.watermark import WorkerProgress

T = TypeVar("T")

VERSIONS_TABLE = "schema_migrations"

_WRITTEN = columns(
    MESSAGES,
    "message_key",
    "dispatch_id",
    "external_send_id",
    "campaign_api_id",
    "outcome",
    "reason",
    "deadline",
    "decision_trigger",
    "summary",
    "decision_request",
    "publish_after",
    "created_at",
    "updated_at",
)
# The first decision's request, and when to publish it, are kept: a later change of the
# message never makes a second one.
_WRITE_MESSAGES = """ON CONFLICT (message_key) DO UPDATE SET
    dispatch_id = excluded.dispatch_id,
    external_send_id = excluded.external_send_id,
    campaign_api_id = excluded.campaign_api_id,
    outcome = excluded.outcome,
    reason = excluded.reason,
    deadline = excluded.deadline,
    decision_trigger = excluded.decision_trigger,
    summary = excluded.summary,
    decision_request = coalesce(messages.decision_request, excluded.decision_request),
    publish_after = coalesce(messages.publish_after, excluded.publish_after),
    updated_at = excluded.updated_at"""
_KEEP_EARLIEST_ARRIVAL = """ON CONFLICT (event_id) DO UPDATE SET received_at = excluded.received_at
    WHERE excluded.received_at < events.received_at"""
_PROGRESS = ", ".join(c.name for c in WORKER_PROGRESS)
_REPORT_PROGRESS = "ON CONFLICT (worker_id) DO UPDATE SET " + ", ".join(
    f"{c.name} = excluded.{c.name}" for c in WORKER_PROGRESS[1:]
)
_FIND = """SELECT outcome, reason, deadline, summary, decision_request,
    decision_published_at, created_at, updated_at FROM messages """
_DUE_BY = "SELECT summary FROM messages WHERE deadline <= ? ORDER BY deadline LIMIT ?"
_ANY_DUE = "SELECT 1 FROM messages WHERE deadline <= ? LIMIT 1"
# Decisions are stored with their request before they are published (decisions.py).
_DECISIONS = Outbox("messages", "message_key", "decision_request", "decision_published_at")
# Settled: no deadline armed, no decision waiting to be published.
_SETTLED_BEFORE = """SELECT message_key FROM messages WHERE created_at < ?
    AND deadline IS NULL
    AND (decision_request IS NULL OR decision_published_at IS NOT NULL)
    LIMIT ?"""
_COUNTS = """SELECT
    (SELECT count(*) FROM messages),
    (SELECT count(*) FROM events),
    (SELECT count(*) FROM messages WHERE decision_trigger IS NOT NULL),
    (SELECT count(*) FROM messages
        WHERE decision_request IS NOT NULL AND decision_published_at IS NULL),
    (SELECT count(*) FROM messages WHERE deadline IS NOT NULL),
    (SELECT count(*) FROM messages WHERE outcome = 'premature_fallback')"""
_TALLY = "SELECT outcome, count(*), count(deadline) FROM messages GROUP BY outcome"


_ATTEMPTS_SINCE = "kind = 'fallback_attempt' AND received_at >= ?"


def _attempt_fields(db: Sql, *names: str) -> list[str]:
    """Expressions reading fields of a fallback attempt's body."""
    return [db.dialect.json_text("body", name) for name in names]


def _earliest_of_each(events: Sequence[TrackedEvent]) -> list[TrackedEvent]:
    """One event per id (a batch can hold redeliveries), the earliest arrival, in id
    order: one statement may not change a row twice, and writers lock in one order."""
    earliest: dict[str, TrackedEvent] = {}
    for event in events:
        kept = earliest.get(event.event_id)
        if kept is None or event.received_at < kept.received_at:
            earliest[event.event_id] = event
    return [earliest[k] for k in sorted(earliest)]


class SqlStore:
    """The algorithm; a backend supplies the database and how a reader opens it."""

    def __init__(
        self, database: Database, timeouts: DeliveryTimeouts, republish_after: timedelta
    ) -> None:
        self._database = database
        self._timeouts = timeouts
        self._republish_after = republish_after
        self._migrations = migrations(database.dialect)
        self.health = HealthStore(database, self._read, timeouts)

    async def open(self) -> None:
        """Connect for writing."""
        await self._database.open()

    async def open_for_reading(self) -> None:
        """Connect, creating nothing."""
        await self._database.open()

    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks; returns their versions."""
        return await self._database.migrate(VERSIONS_TABLE, self._migrations)

    async def _before_reading(self) -> None:
        """What a reader does before each read: nothing, unless a backend says."""

    async def _read(self, work: Callable[[Sql], Awaitable[T]]) -> T:
        """Readers check the schema and never create it (their user may only SELECT)."""
        await self._before_reading()

        async def checked(db: Sql) -> T:
            require_migrated(await schema_version(db, VERSIONS_TABLE), self._migrations)
            return await work(db)

        return await self._database.transaction(checked, reads_only=True)

    # --- writing ---------------------------------------------------------------

    async def apply(self, events: Sequence[TrackedEvent], now: datetime) -> list[PendingRequest]:
        async def work(db: Sql) -> list[PendingRequest]:
            keys = message_keys(events)
            # A key may have no row yet: lock it as a key, so two workers creating the
            # same message take turns, then lock the rows there are. Locked first, so
            # that only the lock's holder inserts a key's events.
            await db.lock_keys(keys)
            locked = await db.fetch(
                f"SELECT message_key, summary FROM messages WHERE {db.is_in('message_key')} "  # noqa: S608
                f"ORDER BY message_key{db.dialect.for_update}",
                keys,
            )
            loaded: dict[str, str | None] = {key: summary for key, summary in locked}
            changed[:] = evolve_all(loaded, events, now)
            rows, decided = to_rows(changed, self._timeouts)
            events_kept = Insert(
                "events",
                EVENTS,
                [
                    (e.event_id, e.message_key, e.kind, e.label, e.received_at, e.body)
                    for e in _earliest_of_each(events)
                ],
                _KEEP_EARLIEST_ARRIVAL,
            )
            # Braze's health counts what the batch tells, committed with it.
            sends = sends_recorded(observe(events, decided))
            await db.insert_many(events_kept, self._messages_written(rows, now), sends)
            return decided

        changed: list[tuple[Message, Decision | None]] = []
        decided = await self._database.transaction(work)
        observe_braze_delivery((message for message, _ in changed), events)  # once committed
        return decided

    def _messages_written(self, rows: Sequence[MessageRow], now: datetime) -> Insert:
        publish_after = now + self._republish_after
        return Insert(
            "messages",
            _WRITTEN,
            [
                (
                    r.key,
                    r.dispatch_id,
                    r.external_send_id,
                    r.campaign_api_id,
                    r.outcome,
                    r.reason,
                    r.deadline,
                    r.decision_trigger,
                    r.summary,
                    r.request,
                    publish_after if r.request else None,
                    now,
                    now,
                )
                for r in rows
            ],
            _WRITE_MESSAGES,
        )

    async def claim_due(
        self, now: datetime, limit: int, due_by: datetime | None = None
    ) -> list[PendingRequest]:
        by = now if due_by is None else due_by

        async def any_due(db: Sql) -> bool:
            return bool(await db.fetch(_ANY_DUE, by))

        # Most sweeps find nothing due: one statement says so, without a transaction.
        if not await self._database.autocommit(any_due):
            return []

        async def work(db: Sql) -> list[PendingRequest]:
            query = _DUE_BY + db.dialect.skip_locked
            due = await db.fetch(query, by, limit)
            if not due:
                return []  # taken by another sweeper since
            # Read in this transaction and stored with the decision: a republished
            # request carries the same health, so it matches the same rule (invariant 3).
            degraded = await degraded_scopes(db)
            summaries = (summary for (summary,) in due)
            rows, decided = claimed_rows(summaries, self._timeouts, now, due_by, degraded)
            timeouts_seen = sends_recorded(observe((), decided))  # they count for Braze's health
            await db.insert_many(self._messages_written(rows, now), timeouts_seen)
            return decided

        return await self._database.transaction(work)

    async def report_progress(
        self, progress: WorkerProgress, forget_before: datetime
    ) -> list[WorkerProgress]:
        async def work(db: Sql) -> list[WorkerProgress]:
            await db.insert_many(
                Insert(
                    "worker_progress",
                    WORKER_PROGRESS,
                    [
                        (
                            progress.worker_id,
                            progress.heartbeat,
                            progress.applied_until,
                            progress.event_time,
                            progress.heard_at,
                            progress.holding,
                        )
                    ],
                    _REPORT_PROGRESS,
                )
            )
            reported = [
                WorkerProgress(
                    row[0], db.time(row[1]), *(optional_time(db, value) for value in row[2:6])
                )
                for row in await db.fetch(f"SELECT {_PROGRESS} FROM worker_progress")  # noqa: S608
            ]
            if any(r.heartbeat < forget_before for r in reported):  # rarely: a worker left
                await db.execute("DELETE FROM worker_progress WHERE heartbeat < ?", forget_before)
            return [r for r in reported if r.heartbeat >= forget_before]

        # Every worker reports every sweep: its own row is one statement on its own.
        return await self._database.autocommit(work)

    async def claim_unpublished(self, now: datetime, limit: int) -> list[PendingRequest]:
        claimed = await _DECISIONS.claim(self._database, now, self._republish_after, limit)
        return [PendingRequest(k, FallbackRequest.model_validate_json(r)) for k, r in claimed]

    async def mark_published(self, message_keys: Sequence[str], now: datetime) -> None:
        await _DECISIONS.mark_published(self._database, message_keys, now)

    async def purge(self, created_before: datetime, limit: int) -> int:
        async def work(db: Sql) -> int:
            query = _SETTLED_BEFORE + db.dialect.skip_locked
            keys = [key for (key,) in await db.fetch(query, created_before, limit)]
            await db.execute(f"DELETE FROM events WHERE {db.is_in('message_key')}", keys)  # noqa: S608
            await db.execute(f"DELETE FROM messages WHERE {db.is_in('message_key')}", keys)  # noqa: S608
            return len(keys)

        return await self._database.transaction(work)

    # --- reading ---------------------------------------------------------------

    async def find(
        self, *, dispatch_id: str | None = None, external_send_id: str | None = None
    ) -> MessageView | None:
        column, wanted = (
            ("dispatch_id", dispatch_id) if dispatch_id else ("external_send_id", external_send_id)
        )

        async def work(db: Sql) -> MessageView | None:
            if wanted is None or NUL in wanted:
                return None  # no stored id has one, and PostgreSQL would refuse the query
            found = await db.fetch(
                f"{_FIND} WHERE {column} = ? ORDER BY created_at LIMIT 1", wanted
            )
            if not found:
                return None
            outcome, reason, deadline, summary, request, published_at, created, updated = found[0]
            message = Message.model_validate_json(summary)
            timeline = await db.fetch(
                "SELECT event_id, kind, label, received_at, body FROM events "
                "WHERE message_key = ? ORDER BY received_at, event_id",
                message.key,
            )
            return view(
                message,
                outcome=outcome,
                reason=reason,
                deadline=optional_time(db, deadline),
                request=request,
                published_at=optional_time(db, published_at),
                created_at=db.time(created),
                updated_at=db.time(updated),
                timeline=[
                    TimelineEntry(
                        event_id=event_id,
                        kind=kind,
                        label=label,
                        received_at=db.time(at),
                        body=json.loads(body),
                    )
                    for event_id, kind, label, at, body in timeline
                ],
            )

        return await self._read(work)

    async def counts(self) -> StoreCounts:
        async def work(db: Sql) -> StoreCounts:
            (row,) = await db.fetch(_COUNTS)
            return StoreCounts(*row)

        return await self._read(work)

    async def tally(self) -> Tally:
        async def work(db: Sql) -> Tally:
            rows = await db.fetch(_TALLY)
            outcomes = {outcome: count for outcome, count, _ in rows}
            return Tally(outcomes, sum(armed for _, _, armed in rows))

        return await self._read(work)

    # --- reading for the console ----------------------------------------------

    async def message_counts(self, since: datetime) -> list[MessageCount]:
        async def work(db: Sql) -> list[MessageCount]:
            rows = await db.fetch(
                "SELECT outcome, decision_trigger, count(*) FROM messages WHERE created_at >= ? "
                "GROUP BY outcome, decision_trigger",
                since,
            )
            return [MessageCount(outcome, trigger, count) for outcome, trigger, count in rows]

        return await self._read(work)

    async def attempt_counts(self, since: datetime) -> list[AttemptCount]:
        async def work(db: Sql) -> list[AttemptCount]:
            handler, outcome = _attempt_fields(db, "handler", "outcome")
            rows = await db.fetch(
                f"SELECT {handler}, {outcome}, count(*) FROM events "  # noqa: S608
                f"WHERE {_ATTEMPTS_SINCE} GROUP BY {handler}, {outcome}",
                since,
            )
            return [AttemptCount(handler, outcome, count) for handler, outcome, count in rows]

        return await self._read(work)

    async def latest_attempts(self, since: datetime) -> list[LatestAttempt]:
        async def work(db: Sql) -> list[LatestAttempt]:
            handler, outcome, detail = _attempt_fields(db, "handler", "outcome", "detail")
            rows = await db.fetch(
                f"""SELECT handler, outcome, detail, received_at FROM (
                    SELECT {handler} AS handler, {outcome} AS outcome, {detail} AS detail,
                        received_at, row_number() OVER (
                            PARTITION BY {handler} ORDER BY received_at DESC, event_id DESC
                        ) AS latest
                    FROM events WHERE {_ATTEMPTS_SINCE}) AS attempts
                WHERE latest = 1 AND handler IS NOT NULL ORDER BY handler""",  # noqa: S608
                since,
            )
            return [
                LatestAttempt(handler, outcome, detail or "", db.time(at))
                for handler, outcome, detail, at in rows
            ]

        return await self._read(work)

    async def pending_deadlines(self) -> PendingDeadlines:
        async def work(db: Sql) -> PendingDeadlines:
            ((count, earliest),) = await db.fetch(
                "SELECT count(*), min(deadline) FROM messages WHERE deadline IS NOT NULL"
            )
            return PendingDeadlines(count, optional_time(db, earliest))

        return await self._read(work)

    async def recent_failures(
        self, limit: int, campaign_api_id: str | None = None, trigger: str | None = None
    ) -> list[FailureSummary]:
        filters = {"campaign_api_id": campaign_api_id, "decision_trigger": trigger}
        wanted = {column: value for column, value in filters.items() if value is not None}

        async def work(db: Sql) -> list[FailureSummary]:
            if any(NUL in value for value in wanted.values()):
                return []  # no stored id has one, and PostgreSQL would refuse the query
            narrowed = "".join(f" AND {column} = ?" for column in wanted)
            rows = await db.fetch(
                f"{RECENT_FAILURES}{narrowed} ORDER BY updated_at DESC LIMIT ?",
                *wanted.values(),
                limit,
            )
            return [failure_summary(row, db.time(row[-1])) for row in rows]

        return await self._read(work)

    async def deliveries(self, since: datetime, limit: int) -> list[Delivery]:
        async def work(db: Sql) -> list[Delivery]:
            sent = db.dialect.json_text("summary", "statuses", "sent", "timestamps", "sent_at")
            delivered = db.dialect.json_text(
                "summary", "statuses", "delivered", "timestamps", "delivered_at"
            )
            rows = await db.fetch(
                f"SELECT {sent}, {delivered} FROM messages "  # noqa: S608
                "WHERE created_at >= ? AND outcome = 'delivered' "
                "ORDER BY created_at DESC LIMIT ?",
                since,
                limit,
            )
            return [Delivery(sent_at, delivered_at) for sent_at, delivered_at in rows]

        return await self._read(work)

    async def ping(self) -> None:
        async def nothing(db: Sql) -> None:
            """The schema check is the ping."""

        await self._read(nothing)

    async def close(self) -> None:
        await self._database.close()

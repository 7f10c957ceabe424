"""The SQLite store: one file in WAL mode, for a single node.

sqlite3 is blocking, so every call runs on one dedicated thread that owns the
connection; that also serialises this process's transactions. Writes take the
database lock up front (BEGIN IMMEDIATE) so two processes never interleave a
read-modify-write, and a second process starting at once waits instead of failing.
A reader (api, status) never creates the file or the tables: it opens an existing file
on its first read.
"""

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from txmail.core.database import (
    BUSY_TIMEOUT_MS,
    apply_sqlite_migrations,
    connect_sqlite,
    from_micros,
    sqlite_transaction,
    to_micros,
)
from txmail.core.errors import ConfigError
from txmail.core.events import FallbackRequest
from txmail.workers.state import Message, claim_deadline
from txmail.workers.store.migrations import (
    HOW_TO_MIGRATE,
    RECENT_FAILURES,
    SQLITE,
    require_migrated,
)
from txmail.workers.store.protocol import (
    AttemptCount,
    Delivery,
    FailureSummary,
    LatestAttempt,
    MessageCount,
    MessageView,
    NotMigrated,
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

_FIND = """SELECT outcome, reason, deadline, summary, decision_request,
    decision_published_at, created_at, updated_at FROM messages """
_FIND_BY_DISPATCH_ID = _FIND + "WHERE dispatch_id = ? ORDER BY created_at LIMIT 1"
_FIND_BY_EXTERNAL_SEND_ID = _FIND + "WHERE external_send_id = ? ORDER BY created_at LIMIT 1"
_RECENT_FAILURES = (
    RECENT_FAILURES
    + " AND (? IS NULL OR campaign_api_id = ?) AND (? IS NULL OR decision_trigger = ?)"
    + " ORDER BY updated_at DESC LIMIT ?"
)


def _optional_micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _optional_time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


class SqliteStore:
    def __init__(self, path: Path, timeouts: DeliveryTimeouts, republish_after: timedelta) -> None:
        self._path = path
        self._timeouts = timeouts
        self._republish_after = republish_after
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open for writing, making the file and its directory when missing."""
        await self._run(self._open)

    def _open(self) -> None:
        with self._cannot_write_is_config_error():
            self._connection = connect_sqlite(self._path)

    async def open_for_reading(self) -> None:
        """Nothing to do yet: a reader opens the file on its first read (``_reading``)."""

    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks; returns their versions."""
        return await self._run(self._migrate)

    def _migrate(self) -> list[int]:
        with self._cannot_write_is_config_error(), self._write() as db:
            return apply_sqlite_migrations(db, "schema_migrations", SQLITE)

    @contextmanager
    def _cannot_write_is_config_error(self) -> Iterator[None]:
        """A file or directory this process may not write fails at start, naming the
        path, instead of being retried for ever."""
        try:
            yield
        except sqlite3.OperationalError as error:
            if error.sqlite_errorname.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")):
                raise ConfigError(
                    f"TXMAIL_DATABASE_URL: cannot write the SQLite database {self._path}: {error}"
                ) from None
            raise

    def _reading(self) -> sqlite3.Connection:
        """The connection for a read, after checking the schema. A reader opens the file
        on first use and never creates it, so one started before any worker answers
        once a worker has made it."""
        if self._connection is None:
            if not self._path.exists():
                raise NotMigrated(
                    f"there is no SQLite database at {self._path}: check TXMAIL_DATABASE_URL, "
                    f"or {HOW_TO_MIGRATE}"
                )
            uri = f"file:{quote(str(self._path))}?mode=rw"
            connection = sqlite3.connect(uri, uri=True, isolation_level=None)
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._connection = connection
        try:
            (version,) = self._connection.execute(
                "SELECT max(version) FROM schema_migrations"
            ).fetchone()
        except sqlite3.OperationalError as error:
            if "no such table" not in str(error):
                raise
            version = None
        require_migrated(version, SQLITE)
        return self._connection

    async def _run(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)
        except sqlite3.OperationalError as error:
            # Locked beyond the busy timeout, disk full, file gone: worth retrying later.
            raise StoreUnavailable(f"SQLite: {error}") from error

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with sqlite_transaction(self._db) as db:
            yield db

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreUnavailable("SQLite store is not open")
        return self._connection

    # --- writing ---------------------------------------------------------------

    async def apply(self, events: Sequence[TrackedEvent], now: datetime) -> list[PendingRequest]:
        return await self._run(lambda: self._apply(events, now))

    def _apply(self, events: Sequence[TrackedEvent], now: datetime) -> list[PendingRequest]:
        with self._write() as db:
            db.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) "
                "DO UPDATE SET received_at = excluded.received_at "
                "WHERE excluded.received_at < events.received_at",
                [
                    (
                        e.event_id,
                        e.message_key,
                        e.kind,
                        e.label,
                        to_micros(e.received_at),
                        e.body,
                    )
                    for e in events
                ],
            )
            keys = message_keys(events)
            loaded: dict[str, str | None] = dict(
                db.execute(
                    "SELECT message_key, summary FROM messages "
                    "WHERE message_key IN (SELECT value FROM json_each(?))",
                    (json.dumps(keys),),
                ).fetchall()
            )
            rows, decided = to_rows(evolve_all(loaded, events, now), self._timeouts)
            self._write_rows(db, rows, now)
        return decided

    def _write_rows(
        self, db: sqlite3.Connection, rows: Sequence[MessageRow], now: datetime
    ) -> None:
        stamp = to_micros(now)
        publish_after = to_micros(now + self._republish_after)
        db.executemany(
            """INSERT INTO messages (message_key, dispatch_id, external_send_id,
                campaign_api_id, outcome, reason, deadline, decision_trigger, summary,
                decision_request, publish_after, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (message_key) DO UPDATE SET
                dispatch_id = excluded.dispatch_id,
                external_send_id = excluded.external_send_id,
                campaign_api_id = excluded.campaign_api_id,
                outcome = excluded.outcome,
                reason = excluded.reason,
                deadline = excluded.deadline,
                decision_trigger = excluded.decision_trigger,
                summary = excluded.summary,
                decision_request = coalesce(decision_request, excluded.decision_request),
                publish_after = coalesce(publish_after, excluded.publish_after),
                updated_at = excluded.updated_at""",
            [
                (
                    r.key,
                    r.dispatch_id,
                    r.external_send_id,
                    r.campaign_api_id,
                    r.outcome,
                    r.reason,
                    _optional_micros(r.deadline),
                    r.decision_trigger,
                    r.summary,
                    r.request,
                    publish_after if r.request else None,
                    stamp,
                    stamp,
                )
                for r in rows
            ],
        )

    async def claim_due(
        self, now: datetime, limit: int, due_by: datetime | None = None
    ) -> list[PendingRequest]:
        return await self._run(lambda: self._claim_due(now, limit, due_by))

    def _claim_due(
        self, now: datetime, limit: int, due_by: datetime | None
    ) -> list[PendingRequest]:
        with self._write() as db:
            due = db.execute(
                "SELECT summary FROM messages WHERE deadline <= ? ORDER BY deadline LIMIT ?",
                (to_micros(now if due_by is None else due_by), limit),
            ).fetchall()
            changed = [
                claim_deadline(Message.model_validate_json(summary), self._timeouts, now, due_by)
                for (summary,) in due
            ]
            rows, decided = to_rows(changed, self._timeouts)
            self._write_rows(db, rows, now)
        return decided

    async def report_progress(
        self, progress: WorkerProgress, forget_before: datetime
    ) -> list[WorkerProgress]:
        return await self._run(lambda: self._report_progress(progress, forget_before))

    def _report_progress(
        self, progress: WorkerProgress, forget_before: datetime
    ) -> list[WorkerProgress]:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO worker_progress VALUES (?, ?, ?, ?, ?, ?)",
                (
                    progress.worker_id,
                    to_micros(progress.heartbeat),
                    _optional_micros(progress.applied_until),
                    _optional_micros(progress.event_time),
                    _optional_micros(progress.heard_at),
                    _optional_micros(progress.holding),
                ),
            )
            db.execute(
                "DELETE FROM worker_progress WHERE heartbeat < ?", (to_micros(forget_before),)
            )
            rows = db.execute(
                "SELECT worker_id, heartbeat, applied_until, event_time, heard_at, holding "
                "FROM worker_progress"
            ).fetchall()
        return [
            WorkerProgress(
                worker_id,
                from_micros(heartbeat),
                _optional_time(applied_until),
                _optional_time(event_time),
                _optional_time(heard_at),
                _optional_time(holding),
            )
            for worker_id, heartbeat, applied_until, event_time, heard_at, holding in rows
        ]

    async def claim_unpublished(self, now: datetime, limit: int) -> list[PendingRequest]:
        return await self._run(lambda: self._claim_unpublished(now, limit))

    def _claim_unpublished(self, now: datetime, limit: int) -> list[PendingRequest]:
        with self._write() as db:
            claimed = db.execute(
                """UPDATE messages SET publish_after = ?
                WHERE message_key IN (
                    SELECT message_key FROM messages
                    WHERE publish_after <= ? AND decision_published_at IS NULL
                    ORDER BY publish_after LIMIT ?)
                RETURNING message_key, decision_request""",
                (to_micros(now + self._republish_after), to_micros(now), limit),
            ).fetchall()
        return [PendingRequest(k, FallbackRequest.model_validate_json(r)) for k, r in claimed]

    async def mark_published(self, message_keys: Sequence[str], now: datetime) -> None:
        await self._run(lambda: self._mark_published(message_keys, now))

    def _mark_published(self, message_keys: Sequence[str], now: datetime) -> None:
        with self._write() as db:
            db.executemany(
                "UPDATE messages SET decision_published_at = ? "
                "WHERE message_key = ? AND decision_published_at IS NULL",
                [(to_micros(now), key) for key in message_keys],
            )

    async def purge(self, created_before: datetime, limit: int) -> int:
        return await self._run(lambda: self._purge(created_before, limit))

    def _purge(self, created_before: datetime, limit: int) -> int:
        with self._write() as db:
            keys = [
                key
                for (key,) in db.execute(
                    """SELECT message_key FROM messages WHERE created_at < ?
                    AND deadline IS NULL
                    AND (decision_request IS NULL OR decision_published_at IS NOT NULL)
                    LIMIT ?""",
                    (to_micros(created_before), limit),
                )
            ]
            listed = (json.dumps(keys),)
            db.execute(
                "DELETE FROM events WHERE message_key IN (SELECT value FROM json_each(?))", listed
            )
            db.execute(
                "DELETE FROM messages WHERE message_key IN (SELECT value FROM json_each(?))", listed
            )
        return len(keys)

    # --- reading ---------------------------------------------------------------

    async def find(
        self, *, dispatch_id: str | None = None, external_send_id: str | None = None
    ) -> MessageView | None:
        return await self._run(lambda: self._find(dispatch_id, external_send_id))

    def _find(self, dispatch_id: str | None, external_send_id: str | None) -> MessageView | None:
        db = self._reading()
        query = _FIND_BY_DISPATCH_ID if dispatch_id else _FIND_BY_EXTERNAL_SEND_ID
        row = db.execute(query, (dispatch_id or external_send_id,)).fetchone()
        if row is None:
            return None
        outcome, reason, deadline, summary, request, published_at, created, updated = row
        message = Message.model_validate_json(summary)
        timeline = db.execute(
            "SELECT event_id, kind, label, received_at, body FROM events "
            "WHERE message_key = ? ORDER BY received_at, event_id",
            (message.key,),
        ).fetchall()
        return view(
            message,
            outcome=outcome,
            reason=reason,
            deadline=None if deadline is None else from_micros(deadline),
            request=request,
            published_at=None if published_at is None else from_micros(published_at),
            created_at=from_micros(created),
            updated_at=from_micros(updated),
            timeline=[
                TimelineEntry(
                    event_id=event_id,
                    kind=kind,
                    label=label,
                    received_at=from_micros(at),
                    body=json.loads(body),
                )
                for event_id, kind, label, at, body in timeline
            ],
        )

    async def counts(self) -> StoreCounts:
        return await self._run(self._counts)

    def _counts(self) -> StoreCounts:
        db = self._reading()
        row = db.execute(
            """SELECT
                (SELECT count(*) FROM messages),
                (SELECT count(*) FROM events),
                (SELECT count(*) FROM messages WHERE decision_trigger IS NOT NULL),
                (SELECT count(*) FROM messages
                    WHERE decision_request IS NOT NULL AND decision_published_at IS NULL),
                (SELECT count(*) FROM messages WHERE deadline IS NOT NULL),
                (SELECT count(*) FROM messages WHERE outcome = 'premature_fallback')"""
        ).fetchone()
        return StoreCounts(*row)

    async def message_counts(self, since: datetime) -> list[MessageCount]:
        return await self._run(lambda: self._message_counts(since))

    def _message_counts(self, since: datetime) -> list[MessageCount]:
        rows = self._reading().execute(
            "SELECT outcome, decision_trigger, count(*) FROM messages WHERE created_at >= ? "
            "GROUP BY outcome, decision_trigger",
            (to_micros(since),),
        )
        return [MessageCount(*row) for row in rows]

    async def attempt_counts(self, since: datetime) -> list[AttemptCount]:
        return await self._run(lambda: self._attempt_counts(since))

    def _attempt_counts(self, since: datetime) -> list[AttemptCount]:
        rows = self._reading().execute(
            "SELECT json_extract(body, '$.handler') AS handler, "
            "json_extract(body, '$.outcome') AS outcome, count(*) FROM events "
            "WHERE kind = 'fallback_attempt' AND received_at >= ? GROUP BY handler, outcome",
            (to_micros(since),),
        )
        return [AttemptCount(*row) for row in rows]

    async def latest_attempts(self, since: datetime) -> list[LatestAttempt]:
        return await self._run(lambda: self._latest_attempts(since))

    def _latest_attempts(self, since: datetime) -> list[LatestAttempt]:
        rows = self._reading().execute(
            """SELECT handler, outcome, detail, received_at FROM (
                SELECT json_extract(body, '$.handler') AS handler,
                    json_extract(body, '$.outcome') AS outcome,
                    json_extract(body, '$.detail') AS detail, received_at,
                    row_number() OVER (PARTITION BY json_extract(body, '$.handler')
                                       ORDER BY received_at DESC, event_id DESC) AS latest
                FROM events WHERE kind = 'fallback_attempt' AND received_at >= ?)
            WHERE latest = 1 AND handler IS NOT NULL ORDER BY handler""",
            (to_micros(since),),
        )
        return [
            LatestAttempt(handler, outcome, detail or "", from_micros(at))
            for handler, outcome, detail, at in rows
        ]

    async def pending_deadlines(self) -> PendingDeadlines:
        return await self._run(self._pending_deadlines)

    def _pending_deadlines(self) -> PendingDeadlines:
        count, earliest = (
            self._reading()
            .execute("SELECT count(*), min(deadline) FROM messages WHERE deadline IS NOT NULL")
            .fetchone()
        )
        return PendingDeadlines(count, _optional_time(earliest))

    async def recent_failures(
        self, limit: int, campaign_api_id: str | None = None, trigger: str | None = None
    ) -> list[FailureSummary]:
        return await self._run(lambda: self._recent_failures(limit, campaign_api_id, trigger))

    def _recent_failures(
        self, limit: int, campaign_api_id: str | None, trigger: str | None
    ) -> list[FailureSummary]:
        rows = self._reading().execute(
            _RECENT_FAILURES,
            (campaign_api_id, campaign_api_id, trigger, trigger, limit),
        )
        return [failure_summary(row, from_micros(row[-1])) for row in rows]

    async def deliveries(self, since: datetime, limit: int) -> list[Delivery]:
        return await self._run(lambda: self._deliveries(since, limit))

    def _deliveries(self, since: datetime, limit: int) -> list[Delivery]:
        rows = self._reading().execute(
            """SELECT json_extract(summary, '$.statuses.sent.timestamps.sent_at'),
                json_extract(summary, '$.statuses.delivered.timestamps.delivered_at')
            FROM messages WHERE created_at >= ? AND outcome = 'delivered'
            ORDER BY created_at DESC LIMIT ?""",
            (to_micros(since), limit),
        )
        return [Delivery(*row) for row in rows]

    async def ping(self) -> None:
        await self._run(self._reading)

    async def close(self) -> None:
        if self._connection is not None:
            await self._run(self._db.close)
            self._connection = None
        self._thread.shutdown(wait=True)

"""The call ledger in the SQLite file the workers use (``txmail run`` shares it).

Like the workers' store: one thread owns the connection, and every claim is one
``BEGIN IMMEDIATE`` transaction, so the read and the write cannot interleave with
another process's.
"""

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from txmail.core.database import (
    apply_sqlite_migrations,
    connect_sqlite,
    from_micros,
    sqlite_transaction,
    to_micros,
)
from txmail.fallback.ledger.claims import (
    CallRow,
    CallState,
    Claim,
    ClaimVerdict,
    LedgerUnavailable,
    judge_claim,
    new_owner,
)
from txmail.fallback.ledger.migrations import SQLITE

T = TypeVar("T")


class SqliteLedger:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-ledger")
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self._connection = connect_sqlite(self._path)
        with self._write() as db:
            apply_sqlite_migrations(db, "fallback_ledger_migrations", SQLITE)

    async def close(self) -> None:
        def close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await self._run(close)
        self._thread.shutdown()

    async def _run(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)
        except sqlite3.OperationalError as error:
            raise LedgerUnavailable(f"SQLite: {error}") from error

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self._connection is None:
            raise LedgerUnavailable("SQLite call ledger is not open")
        with sqlite_transaction(self._connection) as db:
            yield db

    async def claim(
        self, idempotency_key: str, handler: str, replays: int, lease: timedelta
    ) -> Claim:
        owner = new_owner()

        def claim() -> ClaimVerdict:
            now = datetime.now(UTC)
            with self._write() as db:
                found = db.execute(
                    "SELECT state, lease_until, replays FROM fallback_calls "
                    "WHERE idempotency_key = ? AND handler = ?",
                    (idempotency_key, handler),
                ).fetchone()
                row = (
                    None
                    if found is None
                    else CallRow(CallState(found[0]), from_micros(found[1]), found[2])
                )
                verdict = judge_claim(row, replays, now)
                if verdict in (ClaimVerdict.CALL, ClaimVerdict.CALL_AFTER_LOST_OUTCOME):
                    db.execute(
                        """INSERT INTO fallback_calls VALUES (?, ?, 'calling', ?, ?, ?, 1, ?, ?)
                        ON CONFLICT (idempotency_key, handler) DO UPDATE SET
                            state = 'calling', owner = excluded.owner,
                            lease_until = excluded.lease_until, replays = excluded.replays,
                            calls = calls + 1, updated_at = excluded.updated_at""",
                        (
                            idempotency_key,
                            handler,
                            owner,
                            to_micros(now + lease),
                            replays,
                            to_micros(now),
                            to_micros(now),
                        ),
                    )
                return verdict

        return Claim(idempotency_key, handler, owner, await self._run(claim))

    async def record(self, claim: Claim, state: CallState) -> None:
        def record() -> None:
            with self._write() as db:
                db.execute(
                    "UPDATE fallback_calls SET state = ?, updated_at = ? "
                    "WHERE idempotency_key = ? AND handler = ? "
                    "AND (? = 'succeeded' OR (owner = ? AND state = 'calling'))",
                    (
                        state.value,
                        to_micros(datetime.now(UTC)),
                        claim.idempotency_key,
                        claim.handler,
                        state.value,
                        claim.owner,
                    ),
                )

        await self._run(record)

    async def purge(self, changed_before: datetime, limit: int) -> int:
        def purge() -> int:
            with self._write() as db:
                return db.execute(
                    "DELETE FROM fallback_calls WHERE rowid IN (SELECT rowid FROM "
                    "fallback_calls WHERE updated_at < ? LIMIT ?)",
                    (to_micros(changed_before), limit),
                ).rowcount

        return await self._run(purge)

    async def ping(self) -> bool:
        def ping() -> None:
            if self._connection is not None:
                self._connection.execute("SELECT 1 FROM fallback_calls LIMIT 1").fetchall()

        if self._connection is None:
            return False
        try:
            await self._run(ping)
        except (LedgerUnavailable, sqlite3.Error):  # a missing table too
            return False
        return True

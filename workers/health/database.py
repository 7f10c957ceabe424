"""One way to run the health queries on either database.

The health tables keep times as integers in both (workers/health/tables.py), so the
queries are the same text; only how a statement runs differs: SQLite on one thread
that owns the connection, its write transactions taking the file's lock at once;
PostgreSQL from a pool, with a transaction-scoped advisory lock where the deployment
must judge one at a time. Queries are written with ``?``; PostgreSQL gets ``$n``.
"""

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import asyncpg

from txmail.core.database import (
    BUSY_TIMEOUT_MS,
    POSTGRES_MISCONFIGURED,
    POSTGRES_UNAVAILABLE,
    PostgresConnection,
    connect_sqlite,
    sqlite_path,
)
from txmail.core.errors import ConfigError
from txmail.core.readable import readable
from txmail.workers.store.migrations import HOW_TO_MIGRATE
from txmail.workers.store.protocol import NotMigrated, StoreUnavailable

T = TypeVar("T")
Row = tuple[Any, ...]
_NOT_MIGRATED = f"no health tables in this database: {HOW_TO_MIGRATE}"


class Statements(Protocol):
    """The statements of one transaction (or one read)."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Database(Protocol):
    def transaction(
        self, *, one_at_a_time: bool = False
    ) -> AbstractAsyncContextManager[Statements]:
        """A write transaction; ``one_at_a_time`` across the deployment's processes."""

    def reading(self) -> AbstractAsyncContextManager[Statements]: ...

    async def close(self) -> None: ...


# --- SQLite ------------------------------------------------------------------------


class _SqliteStatements:
    def __init__(self, run: Callable[[Callable[[], Any]], Any], db: sqlite3.Connection) -> None:
        self._run = run
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        rows: list[Row] = await self._run(lambda: self._db.execute(sql, args).fetchall())
        return rows

    async def execute(self, sql: str, *args: Any) -> None:
        await self._run(lambda: self._db.execute(sql, args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._run(lambda: self._db.executemany(sql, rows))


class SqliteDatabase:
    """One connection on one thread; this process's transactions one after another
    (the lock), other processes' kept out by the file's write lock (BEGIN IMMEDIATE)."""

    def __init__(self, path: Path, *, read_only: bool) -> None:
        self._path = path
        self._read_only = read_only
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-health")
        self._connection: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                raise NotMigrated(_NOT_MIGRATED) from None
            raise StoreUnavailable(f"SQLite: {error}") from error

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            if not self._read_only:
                self._connection = connect_sqlite(self._path)
            elif not self._path.exists():
                raise NotMigrated(f"there is no SQLite database at {self._path}: {HOW_TO_MIGRATE}")
            else:
                # A reader never creates the file.
                uri = f"file:{quote(str(self._path))}?mode=rw"
                self._connection = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False
                )
                self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return self._connection

    @asynccontextmanager
    async def transaction(self, *, one_at_a_time: bool = False) -> AsyncIterator[Statements]:
        # Every write transaction holds the file's one write lock: one at a time anyway.
        async with self._lock:
            db = await self._run(self._connect)
            await self._run(lambda: db.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteStatements(self._run, db)
            except BaseException:
                await self._run(lambda: db.execute("ROLLBACK"))
                raise
            await self._run(lambda: db.execute("COMMIT"))

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Statements]:
        async with self._lock:
            yield _SqliteStatements(self._run, await self._run(self._connect))

    async def close(self) -> None:
        if self._connection is not None:
            await self._run(self._connection.close)
            self._connection = None
        self._thread.shutdown(wait=True)


# --- PostgreSQL ----------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``, ..."""
    count = iter(range(1, sql.count("?") + 1))
    return _PLACEHOLDER.sub(lambda _: f"${next(count)}", sql)


class _PostgresStatements:
    def __init__(self, db: PostgresConnection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [tuple(r) for r in await self._db.fetch(_numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        await self._db.execute(_numbered(sql), *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._db.executemany(_numbered(sql), rows)


class PostgresDatabase:
    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    async def _connected(self) -> "asyncpg.Pool[asyncpg.Record]":
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self._url, min_size=1, max_size=2, command_timeout=60
                )
            except POSTGRES_MISCONFIGURED as error:
                raise ConfigError(f"TXMAIL_DATABASE_URL: PostgreSQL refused it: {error}") from None
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[PostgresConnection]:
        try:
            pool = await self._connected()
            async with pool.acquire() as db:
                yield db
        except asyncpg.UndefinedTableError:
            raise NotMigrated(_NOT_MIGRATED) from None
        except POSTGRES_UNAVAILABLE as error:
            raise StoreUnavailable(f"PostgreSQL: {readable(error)}") from error

    @asynccontextmanager
    async def transaction(self, *, one_at_a_time: bool = False) -> AsyncIterator[Statements]:
        async with self._connection() as db, db.transaction():
            if one_at_a_time:
                # Held until the commit: the next worker waits, then sees what this one wrote.
                await db.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('txmail.health' || current_schema()))"
                )
            yield _PostgresStatements(db)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Statements]:
        async with self._connection() as db:
            yield _PostgresStatements(db)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def open_database(url: str, *, read_only: bool = False) -> SqliteDatabase | PostgresDatabase:
    """The database at TXMAIL_DATABASE_URL; it connects on first use."""
    path = sqlite_path(url)
    return PostgresDatabase(url) if path is None else SqliteDatabase(path, read_only=read_only)

"""SQLite behind the ``Sql`` interface: one file in WAL mode, for a single node.

sqlite3 is blocking, so every statement runs on one dedicated thread that owns the
connection, and this process's transactions take turns (a lock). A write transaction
takes the file's lock up front (BEGIN IMMEDIATE), so two processes never interleave a
read-modify-write, and a second process starting at once waits instead of failing.
"""

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from txmail.core.database import BUSY_TIMEOUT_MS, Migration, connect_sqlite, from_micros, to_micros
from txmail.core.errors import ConfigError
from txmail.core.sql import SQLITE, Insert, Row, Sql, apply_migrations

T = TypeVar("T")


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_micros(value)
    if isinstance(value, timedelta):  # added to a time: microseconds too
        return value // timedelta(microseconds=1)
    if isinstance(value, list):
        return json.dumps(value)  # read back by json_each (``is_in``)
    return value


class _SqliteSql:
    dialect = SQLITE

    def __init__(self, database: "SqliteDatabase", connection: sqlite3.Connection) -> None:
        self._database = database
        self._connection = connection

    def is_in(self, column: str) -> str:
        return f"{column} IN (SELECT value FROM json_each(?))"  # noqa: S608

    def time(self, value: Any) -> datetime:
        return from_micros(value)

    async def now(self) -> datetime:
        return datetime.now(UTC)

    async def execute(self, sql: str, *args: Any) -> int:
        params = [_value(a) for a in args]
        return await self._database.run(lambda: self._connection.execute(sql, params).rowcount)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        params = [_value(a) for a in args]
        return await self._database.run(lambda: self._connection.execute(sql, params).fetchall())

    async def insert_many(self, *inserts: Insert) -> None:
        batches = []
        for insert in (i for i in inserts if i.rows):
            names = ", ".join(c.name for c in insert.columns)
            marks = ", ".join("?" for _ in insert.columns)
            sql = f"INSERT INTO {insert.table} ({names}) VALUES ({marks}) {insert.tail}"  # noqa: S608
            batches.append((sql, [[_value(v) for v in row] for row in insert.rows]))

        def insert_all() -> None:
            for sql, params in batches:
                self._connection.executemany(sql, params)

        if batches:
            await self._database.run(insert_all)  # one trip to the database's thread

    async def lock_keys(self, keys: Sequence[str]) -> None:
        """Nothing to do: a write transaction holds the whole file."""


def _roll_back(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:  # a failed statement may have ended it already
        connection.execute("ROLLBACK")


class SqliteDatabase:
    """``unavailable`` is what the caller's users retry on (the store's or the ledger's
    error): locked beyond the busy timeout, disk full, file gone."""

    dialect = SQLITE

    def __init__(self, path: Path, unavailable: Callable[[str], Exception]) -> None:
        self._path = path
        self._unavailable = unavailable
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._turn = asyncio.Lock()
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open for writing, making the file and its directory when missing."""

        def connect() -> None:
            try:
                self._connection = connect_sqlite(self._path)
            except sqlite3.OperationalError as error:
                raise self._unwritable(error) or error from None

        await self.run(connect)

    async def open_existing(self) -> bool:
        """Open for reading, never creating the file; False when there is none yet."""

        def connect() -> bool:
            if self._connection is None:
                if not self._path.exists():
                    return False
                uri = f"file:{quote(str(self._path))}?mode=rw"
                connection = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False
                )
                connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                self._connection = connection
            return True

        return await self.run(connect)

    async def run(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)
        except sqlite3.OperationalError as error:
            raise self._unavailable(f"SQLite: {error}") from error

    async def transaction(
        self, work: Callable[[Sql], Awaitable[T]], *, reads_only: bool = False
    ) -> T:
        async with self._turn:
            connection = self._open_connection()
            begin = "BEGIN" if reads_only else "BEGIN IMMEDIATE"
            try:
                # Inside the try: a BEGIN cancelled while it waits for another process's
                # lock still runs on the thread, and is rolled back right after it.
                await self.run(lambda: connection.execute(begin))
                result = await work(_SqliteSql(self, connection))
                await self.run(lambda: connection.execute("COMMIT"))
            except BaseException:
                await self.run(lambda: _roll_back(connection))
                raise
            return result

    async def autocommit(self, work: Callable[[Sql], Awaitable[T]]) -> T:
        async with self._turn:
            # In autocommit mode each statement is a transaction, taking the write
            # lock itself.
            return await work(_SqliteSql(self, self._open_connection()))

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise self._unavailable(f"the SQLite database {self._path} is not open")
        return self._connection

    async def migrate(self, versions_table: str, migrations: Sequence[Migration]) -> list[int]:
        try:
            return await self.transaction(
                lambda db: apply_migrations(db, versions_table, migrations)
            )
        except Exception as error:
            cause = error.__cause__
            if isinstance(cause, sqlite3.OperationalError) and (
                unwritable := self._unwritable(cause)
            ):
                raise unwritable from None
            raise

    def _unwritable(self, error: sqlite3.OperationalError) -> ConfigError | None:
        """A file or directory this process may not write fails at start, naming the
        path, instead of being retried for ever."""
        if not error.sqlite_errorname.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")):
            return None
        return ConfigError(
            f"TXMAIL_DATABASE_URL: cannot write the SQLite database {self._path}: {error}"
        )

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await self.run(connection.close)
        self._thread.shutdown(wait=True)

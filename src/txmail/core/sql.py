"""One way to write SQL for both databases, so the store and the call ledger each hold
their algorithm once (what dramatiq's result backends do): statements are written with
``?`` placeholders, times as datetimes and lists as lists, and each dialect's connection
translates them and supplies the few parts that differ (locks, bulk inserts, the clock).
"""

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Protocol, TypeVar

import asyncpg

from txmail.core.database import Migration

T = TypeVar("T")
Row = Sequence[Any]

# A statement failed on the database's side (a missing table among them), as opposed
# to the database being away.
DATABASE_ERRORS = (sqlite3.Error, asyncpg.PostgresError)


class Kind(Enum):
    TEXT = "text"
    INTEGER = "integer"
    BIG_INTEGER = "big integer"  # beyond 2^31: a duration in microseconds
    TIME = "time"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    constraint: str = ""  # as SQL: "NOT NULL", "PRIMARY KEY"


@dataclass(frozen=True)
class Dialect:
    types: dict[Kind, str]
    for_update: str  # appended to a SELECT that locks the rows it reads
    skip_locked: str  # ... that takes only rows nobody else holds
    row_id: str  # the column every table has that names a row
    # An expression reading the clock leases are judged on, as a time column holds it,
    # for a statement that has no round trip of its own to spare on ``Sql.now``.
    clock: str
    # An expression reading a text field of a JSON text column, from ``column``,
    # ``dotted`` (a.b) and ``commas`` (a,b) paths.
    json_field: str

    def json_text(self, column: str, *path: str) -> str:
        """The text at ``path`` in the JSON of ``column`` (NULL where there is none)."""
        return self.json_field.format(column=column, dotted=".".join(path), commas=",".join(path))

    def create_table(self, table: str, columns: Sequence[Column], *constraints: str) -> str:
        lines = [f"{c.name} {self.types[c.kind]} {c.constraint}".rstrip() for c in columns]
        return f"CREATE TABLE {table} (\n    " + ",\n    ".join([*lines, *constraints]) + "\n)"


# SQLite keeps times as microseconds since the epoch: integers sort and index well there.
# It has no row locks: a write transaction holds the whole file (BEGIN IMMEDIATE).
SQLITE = Dialect(
    {Kind.TEXT: "TEXT", Kind.INTEGER: "INTEGER", Kind.BIG_INTEGER: "INTEGER", Kind.TIME: "INTEGER"},
    for_update="",
    skip_locked="",
    row_id="rowid",
    # The system clock, as ``now`` reads it, in microseconds (to the millisecond: no
    # finer in SQLite).
    clock="CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)",
    json_field="json_extract({column}, '$.{dotted}')",
)
POSTGRES = Dialect(
    {
        Kind.TEXT: "TEXT",
        Kind.INTEGER: "INTEGER",
        Kind.BIG_INTEGER: "BIGINT",
        Kind.TIME: "TIMESTAMPTZ",
    },
    for_update=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    row_id="ctid",
    # When the statement began: one value however often a statement reads it.
    clock="statement_timestamp()",
    json_field="({column}::jsonb #>> '{{{commas}}}')",
)


@dataclass(frozen=True)
class Insert:
    """Rows for one table, values in ``columns``' order; ``tail`` is the ON CONFLICT
    clause."""

    table: str
    columns: Sequence[Column]
    rows: Sequence[Row]
    tail: str = ""


class Sql(Protocol):
    """A connection inside one transaction (or, under ``Database.autocommit``, running
    each statement as a transaction of its own)."""

    dialect: Dialect

    def is_in(self, column: str) -> str:
        """A condition: ``column`` is one of the list passed for its ``?``."""

    def time(self, value: Any) -> datetime:
        """A time column as read, as a datetime."""

    async def now(self) -> datetime:
        """The clock that leases are judged on."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; returns how many rows it changed."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def insert_many(self, *inserts: Insert) -> None:
        """Insert every row of each of ``inserts``, in one round trip however many
        tables and rows (nothing for an insert without rows)."""

    async def lock_keys(self, keys: Sequence[str]) -> None:
        """Hold, until the transaction ends, a lock on each key, rows or no rows yet:
        other writers of the same keys wait."""


def optional_time(db: Sql, value: Any) -> datetime | None:
    return None if value is None else db.time(value)


async def schema_version(db: Sql, versions_table: str) -> int | None:
    """The highest migration applied; None when there is no such table."""
    try:
        (row,) = await db.fetch(f"SELECT max(version) FROM {versions_table}")  # noqa: S608
    except Exception as error:
        missing = error.__cause__ or error  # SQLite's arrives as the caller's "unavailable"
        if isinstance(missing, asyncpg.UndefinedTableError) or "no such table" in str(missing):
            return None
        raise
    version: int | None = row[0]
    return version


async def apply_migrations(
    db: Sql, versions_table: str, migrations: Sequence[Migration]
) -> list[int]:
    """In the caller's transaction, apply the migrations ``versions_table`` does not
    list yet; returns their versions. Migrators of one table wait for each other (the
    lock on its name), then find the work done."""
    # The table name is one of txmail's own constants, never input.
    await db.lock_keys([f"txmail.migrations:{versions_table}"])
    await db.execute(
        f"CREATE TABLE IF NOT EXISTS {versions_table} "
        f"(version INTEGER PRIMARY KEY, applied_at {db.dialect.types[Kind.TIME]} NOT NULL)"
    )
    applied = {r[0] for r in await db.fetch(f"SELECT version FROM {versions_table}")}  # noqa: S608
    missing = [(v, statements) for v, statements in migrations if v not in applied]
    for version, statements in missing:
        for statement in statements:
            await db.execute(statement)
        await db.execute(
            f"INSERT INTO {versions_table} VALUES (?, ?)",  # noqa: S608
            version,
            await db.now(),
        )
    return [version for version, _ in missing]


class Database(Protocol):
    dialect: Dialect

    async def open(self) -> None:
        """Connect for writing (making a SQLite file when missing)."""

    async def transaction(
        self, work: Callable[[Sql], Awaitable[T]], *, reads_only: bool = False
    ) -> T:
        """Run ``work`` in one transaction; ``reads_only`` takes no write lock."""

    async def autocommit(self, work: Callable[[Sql], Awaitable[T]]) -> T:
        """Run ``work`` with each statement committed on its own: for one statement, or
        statements that need not commit together. Like a transaction that loses a race,
        ``work`` may be run again, so it must be safe to repeat. Nothing here holds
        across statements: ``lock_keys`` holds nothing, and ``insert_many`` of several
        tables is one statement on PostgreSQL but several on SQLite."""

    async def migrate(self, versions_table: str, migrations: Sequence[Migration]) -> list[int]:
        """Apply what is missing; ConfigError when this user or file may not."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Outbox:
    """A table of records written to be published, each leased to one publisher at a
    time (``publish_after``) and stamped once RabbitMQ confirmed it: the message
    store's decisions and the health store's changes."""

    table: str
    key: str  # the column naming a record
    body: str  # the column holding what is published
    published_at: str  # the column stamped once confirmed

    async def claim(
        self, database: Database, now: datetime, lease: timedelta, limit: int
    ) -> list[Row]:
        """(key, body) of the records whose publish is due, leased to this caller for
        ``lease``: one statement."""

        async def work(db: Sql) -> list[Row]:
            return await db.fetch(
                f"""UPDATE {self.table} SET publish_after = ?
                WHERE {self.key} IN (
                    SELECT {self.key} FROM {self.table}
                    WHERE publish_after <= ? AND {self.published_at} IS NULL
                    ORDER BY publish_after LIMIT ?{db.dialect.skip_locked})
                RETURNING {self.key}, {self.body}""",  # noqa: S608
                now + lease,
                now,
                limit,
            )

        return await database.autocommit(work)

    async def mark_published(self, database: Database, keys: Sequence[str], now: datetime) -> None:
        async def work(db: Sql) -> None:
            # The rows locked in key order, as a batch locks its messages: in the order a
            # scan met them, this could hold one a batch wants while waiting for one the
            # batch holds, a deadlock PostgreSQL breaks only after deadlock_timeout.
            await db.execute(
                f"""UPDATE {self.table} SET {self.published_at} = ?
                WHERE {self.key} IN (
                    SELECT {self.key} FROM {self.table}
                    WHERE {db.is_in(self.key)} AND {self.published_at} IS NULL
                    ORDER BY {self.key}{db.dialect.for_update})""",  # noqa: S608
                now,
                list(keys),
            )

        await database.autocommit(work)

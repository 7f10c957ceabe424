"""PostgreSQL behind the ``Sql`` interface: a pool of connections shared by any number
of processes.

Row locks (``FOR UPDATE``; ``SKIP LOCKED`` to share work without waiting) keep writers
apart; keys that may have no row yet are locked with transaction-scoped advisory locks.
Leases are judged on the database's clock, so processes' clocks need not agree.
"""

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import cache
from typing import Any, TypeVar

import asyncpg

from txmail.core.database import (
    POSTGRES_MISCONFIGURED,
    POSTGRES_UNAVAILABLE,
    Migration,
    PostgresConnection,
)
from txmail.core.errors import ConfigError
from txmail.core.readable import readable
from txmail.core.sql import POSTGRES, Insert, Row, Sql, apply_migrations

T = TypeVar("T")

# Lost races between writers: the transaction is simply run again.
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_ATTEMPTS = 5


@cache
def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``... (no statement of txmail's
    has a ``?`` of its own)."""
    numbers = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)


class _PostgresSql:
    dialect = POSTGRES

    def __init__(self, connection: PostgresConnection) -> None:
        self._connection = connection

    def is_in(self, column: str) -> str:
        return f"{column} = ANY(?::text[])"

    def time(self, value: Any) -> datetime:
        time: datetime = value  # timestamptz arrives as a datetime
        return time

    async def now(self) -> datetime:
        now: datetime = await self._connection.fetchval("SELECT clock_timestamp()")
        return now

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._connection.execute(_numbered(sql), *args)
        changed = status.rsplit(" ", 1)[-1]  # "INSERT 0 1", "UPDATE 3", "CREATE TABLE"
        return int(changed) if changed.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [tuple(r) for r in await self._connection.fetch(_numbered(sql), *args)]

    async def insert_many(self, *inserts: Insert) -> None:
        # One array per column, unnested; the tables after the first in WITH clauses:
        # one statement however many tables and rows.
        args: list[list[Any]] = []
        statements = []
        for insert in (i for i in inserts if i.rows):
            arrays = []
            for i, column in enumerate(insert.columns):
                args.append([row[i] for row in insert.rows])
                arrays.append(f"${len(args)}::{POSTGRES.types[column.kind]}[]")
            names = ", ".join(c.name for c in insert.columns)
            statements.append(
                f"INSERT INTO {insert.table} ({names}) "  # noqa: S608
                f"SELECT * FROM unnest({', '.join(arrays)}) {insert.tail}"
            )
        if not statements:
            return
        *first, last = statements
        with_clauses = ", ".join(f"_{n} AS ({s})" for n, s in enumerate(first))
        await self._connection.execute(f"WITH {with_clauses} {last}" if first else last, *args)

    async def lock_keys(self, keys: Sequence[str]) -> None:
        # In one order (of the locks' numbers) so two transactions never wait in a
        # circle; per schema, so deployments sharing a database do not hold each other.
        await self._connection.execute(
            "SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT "
            "hashtextextended(k || current_schema(), 0) AS h FROM unnest($1::text[]) AS k "
            "ORDER BY h) AS sorted",
            list(keys),
        )


async def _roll_back_if_open(connection: "asyncpg.Connection[asyncpg.Record]") -> None:
    """What a connection needs before going back to the pool. asyncpg's default runs
    a reset query (advisory unlocks, CLOSE ALL, UNLISTEN, RESET ALL) on every release:
    a round trip per transaction, for session state txmail never creates (its locks
    are transaction-scoped, it listens to nothing and sets nothing)."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class PostgresDatabase:
    """``unavailable`` is what the caller's users retry on (the store's or the ledger's
    error): the database down, restarting, unreachable, or a race lost five times."""

    dialect = POSTGRES

    def __init__(
        self,
        url: str,
        unavailable: Callable[[str], Exception],
        *,
        command_timeout: float,
        pool_size: int = 4,
    ) -> None:
        self._url = url
        self._unavailable = unavailable
        self._command_timeout = command_timeout
        self._pool_size = pool_size
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                command_timeout=self._command_timeout,
                reset=_roll_back_if_open,
            )
        except POSTGRES_MISCONFIGURED as error:
            # Waiting will not make these work: say so, instead of a traceback or a
            # process retrying for ever.
            raise ConfigError(f"TXMAIL_DATABASE_URL: PostgreSQL refused it: {error}") from None
        except POSTGRES_UNAVAILABLE as error:
            raise self._unavailable(f"PostgreSQL: {readable(error)}") from error

    async def transaction(
        self, work: Callable[[Sql], Awaitable[T]], *, reads_only: bool = False
    ) -> T:
        async def in_transaction(connection: PostgresConnection) -> T:
            async with connection.transaction(readonly=reads_only):
                return await work(_PostgresSql(connection))

        return await self._on_a_connection(in_transaction)

    async def autocommit(self, work: Callable[[Sql], Awaitable[T]]) -> T:
        # No BEGIN and COMMIT: two round trips fewer, which is most of what an idle
        # sweep costs.
        return await self._on_a_connection(lambda connection: work(_PostgresSql(connection)))

    async def _on_a_connection(self, work: Callable[[PostgresConnection], Awaitable[T]]) -> T:
        """``work`` on a connection of the pool, run again when it lost a race."""
        if self._pool is None:
            raise self._unavailable("the PostgreSQL database is not open")
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self._pool.acquire() as connection:
                    return await work(connection)
            except _RETRYABLE as error:
                if attempt == _ATTEMPTS:
                    raise self._unavailable(f"PostgreSQL: {readable(error)}") from error
            except POSTGRES_UNAVAILABLE as error:
                raise self._unavailable(f"PostgreSQL: {readable(error)}") from error
        raise AssertionError("unreachable")

    async def migrate(self, versions_table: str, migrations: Sequence[Migration]) -> list[int]:
        try:
            return await self.transaction(
                lambda db: apply_migrations(db, versions_table, migrations)
            )
        except asyncpg.InsufficientPrivilegeError as error:
            raise ConfigError(
                f"TXMAIL_DATABASE_URL: this user may not create the txmail tables: {error}"
            ) from None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

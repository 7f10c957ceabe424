"""The call ledger in the workers' PostgreSQL database, for any number of executors.

A claim inserts the row or, if it exists, locks it (``FOR UPDATE``) before judging it,
so two executors claiming the same call at once are served one after the other.
Leases are judged on the database's clock, so executors' clocks need not agree.
"""

from collections.abc import Awaitable, Callable
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
from txmail.core.readable import readable
from txmail.fallback.ledger.claims import (
    CallRow,
    CallState,
    Claim,
    ClaimVerdict,
    LedgerUnavailable,
    judge_claim,
    new_owner,
)
from txmail.fallback.ledger.migrations import POSTGRES

T = TypeVar("T")
Db: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# A ledger that does not answer soon holds up every fallback: give up and wait instead.
COMMAND_TIMEOUT = 10.0

_INSERT = """INSERT INTO fallback_calls VALUES ($1, $2, 'calling', $3, $4, $5, 1, $6, $6)
ON CONFLICT (idempotency_key, handler) DO NOTHING"""
# An upsert, not an update: the row may have been purged since (if it was that old).
_TAKE = """INSERT INTO fallback_calls VALUES ($1, $2, 'calling', $3, $4, $5, 1, $6, $6)
ON CONFLICT (idempotency_key, handler) DO UPDATE SET state = 'calling',
    owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until,
    replays = EXCLUDED.replays, calls = fallback_calls.calls + 1,
    updated_at = EXCLUDED.updated_at"""


class PostgresLedger:
    def __init__(self, url: str, pool_size: int = 4) -> None:
        self._url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self._pool_size, command_timeout=COMMAND_TIMEOUT
            )
        except POSTGRES_MISCONFIGURED as error:
            raise ConfigError(f"TXMAIL_DATABASE_URL: PostgreSQL refused it: {error}") from None
        except POSTGRES_UNAVAILABLE as error:
            raise LedgerUnavailable(f"PostgreSQL: {readable(error)}") from error
        await self._transaction(self._migrate)

    @staticmethod
    async def _migrate(db: Db) -> None:
        await apply_postgres_migrations(
            db, "fallback_ledger_migrations", "txmail.ledger:", POSTGRES
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _transaction(self, work: Callable[[Db], Awaitable[T]]) -> T:
        if self._pool is None:
            raise LedgerUnavailable("PostgreSQL call ledger is not open")
        try:
            async with self._pool.acquire() as db, db.transaction():
                return await work(db)
        except POSTGRES_UNAVAILABLE as error:
            raise LedgerUnavailable(f"PostgreSQL: {readable(error)}") from error

    async def claim(
        self, idempotency_key: str, handler: str, replays: int, lease: timedelta
    ) -> Claim:
        owner = new_owner()

        async def claim(db: Db) -> ClaimVerdict:
            now: datetime = await db.fetchval("SELECT clock_timestamp()")
            values = (idempotency_key, handler, owner, now + lease, replays, now)
            if await db.execute(_INSERT, *values) == "INSERT 0 1":
                return ClaimVerdict.CALL
            found = await db.fetchrow(
                "SELECT state, lease_until, replays FROM fallback_calls "
                "WHERE idempotency_key = $1 AND handler = $2 FOR UPDATE",
                idempotency_key,
                handler,
            )
            row = None if found is None else CallRow(CallState(found[0]), found[1], found[2])
            verdict = judge_claim(row, replays, now)
            if verdict in (ClaimVerdict.CALL, ClaimVerdict.CALL_AFTER_LOST_OUTCOME):
                await db.execute(_TAKE, *values)
            return verdict

        return Claim(idempotency_key, handler, owner, await self._transaction(claim))

    async def record(self, claim: Claim, state: CallState) -> None:
        async def record(db: Db) -> None:
            await db.execute(
                "UPDATE fallback_calls SET state = $1, updated_at = clock_timestamp() "
                "WHERE idempotency_key = $2 AND handler = $3 "
                "AND ($1 = 'succeeded' OR (owner = $4 AND state = 'calling'))",
                state.value,
                claim.idempotency_key,
                claim.handler,
                claim.owner,
            )

        await self._transaction(record)

    async def purge(self, changed_before: datetime, limit: int) -> int:
        async def purge(db: Db) -> int:
            status: str = await db.execute(
                "DELETE FROM fallback_calls WHERE ctid IN (SELECT ctid FROM fallback_calls "
                "WHERE updated_at < $1 LIMIT $2)",
                changed_before,
                limit,
            )
            return int(status.split()[-1])

        return await self._transaction(purge)

    async def ping(self) -> bool:
        async def ping(db: Db) -> None:
            await db.fetchval("SELECT 1 FROM fallback_calls LIMIT 1")

        try:
            await self._transaction(ping)
        except (LedgerUnavailable, asyncpg.PostgresError):  # a missing table too
            return False
        return True

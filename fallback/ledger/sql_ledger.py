"""The call ledger's algorithm, once, over either database (``txmail.core.sql``).

A claim inserts the row or, if it exists, locks it before judging it, so two executors
claiming the same call at once are served one after the other. Leases are judged on
the database's clock (PostgreSQL's, so executors' clocks need not agree; on SQLite,
one node, the system's).

A first call and its outcome are one statement each, on the database's clock
(``Dialect.clock``): the insert that grants it, and the update that records it. Only a
claim that finds a row runs the transaction that reads and judges it. Each round trip
to the database costs the executor a wakeup; a transaction would cost three more.
"""

from datetime import datetime, timedelta

from txmail.core.sql import DATABASE_ERRORS, Database, Sql
from txmail.fallback.ledger.claims import (
    CallRow,
    CallState,
    Claim,
    ClaimVerdict,
    LedgerUnavailable,
    judge_claim,
    new_owner,
)
from txmail.fallback.ledger.migrations import VERSIONS_TABLE, migrations

_CALLING = "INSERT INTO fallback_calls VALUES (?, ?, 'calling', ?, ?, ?, 1, ?, ?) "
_INSERT = _CALLING + "ON CONFLICT (idempotency_key, handler) DO NOTHING"
# An upsert, not an update: the row may have been purged since (if it was that old).
_TAKE = (
    _CALLING
    + """ON CONFLICT (idempotency_key, handler) DO UPDATE SET state = 'calling',
    owner = excluded.owner, lease_until = excluded.lease_until,
    replays = excluded.replays, calls = fallback_calls.calls + 1,
    updated_at = excluded.updated_at"""
)
# _INSERT on the database's clock, the lease as a duration.
_FIRST = (
    "INSERT INTO fallback_calls VALUES (?, ?, 'calling', ?, {clock} + ?, ?, 1, {clock}, "
    "{clock}) ON CONFLICT (idempotency_key, handler) DO NOTHING"
)
_FIND = "SELECT state, lease_until, replays FROM fallback_calls WHERE idempotency_key = ? "
_RECORD = """UPDATE fallback_calls SET state = ?, updated_at = {clock}
    WHERE idempotency_key = ? AND handler = ?
    AND (? = 'succeeded' OR (owner = ? AND state = 'calling'))"""


class SqlLedger:
    def __init__(self, database: Database) -> None:
        self._database = database
        clock = database.dialect.clock
        self._first = _FIRST.format(clock=clock)
        self._record = _RECORD.format(clock=clock)

    async def open(self) -> None:
        await self._database.open()
        await self._database.migrate(VERSIONS_TABLE, migrations(self._database.dialect))

    async def close(self) -> None:
        await self._database.close()

    async def claim(
        self, idempotency_key: str, handler: str, replays: int, lease: timedelta
    ) -> Claim:
        owner = new_owner()
        first = (idempotency_key, handler, owner, lease, replays)
        if await self._database.autocommit(lambda db: db.execute(self._first, *first)) == 1:
            return Claim(idempotency_key, handler, owner, ClaimVerdict.CALL)

        async def claim(db: Sql) -> ClaimVerdict:
            now = await db.now()
            values = (idempotency_key, handler, owner, now + lease, replays, now, now)
            if await db.execute(_INSERT, *values) == 1:
                return ClaimVerdict.CALL
            found = await db.fetch(
                _FIND + "AND handler = ?" + db.dialect.for_update, idempotency_key, handler
            )
            row = (
                CallRow(CallState(found[0][0]), db.time(found[0][1]), found[0][2])
                if found
                else None
            )
            verdict = judge_claim(row, replays, now)
            if verdict in (ClaimVerdict.CALL, ClaimVerdict.CALL_AFTER_LOST_OUTCOME):
                await db.execute(_TAKE, *values)
            return verdict

        return Claim(idempotency_key, handler, owner, await self._database.transaction(claim))

    async def record(self, claim: Claim, state: CallState) -> None:
        values = (state.value, claim.idempotency_key, claim.handler, state.value, claim.owner)
        await self._database.autocommit(lambda db: db.execute(self._record, *values))

    async def purge(self, changed_before: datetime, limit: int) -> int:
        async def purge(db: Sql) -> int:
            row_id = db.dialect.row_id
            return await db.execute(
                f"DELETE FROM fallback_calls WHERE {row_id} IN (SELECT {row_id} "  # noqa: S608
                "FROM fallback_calls WHERE updated_at < ? LIMIT ?)",
                changed_before,
                limit,
            )

        return await self._database.transaction(purge)

    async def ping(self) -> bool:
        async def ping(db: Sql) -> None:
            await db.fetch("SELECT 1 FROM fallback_calls LIMIT 1")

        try:
            await self._database.transaction(ping, reads_only=True)
        except (LedgerUnavailable, *DATABASE_ERRORS):  # a missing table too
            return False
        return True

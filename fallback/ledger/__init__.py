"""The call ledger: one row per (request idempotency key, handler) in TXMAIL_DATABASE_URL,
so a handler that succeeded for a message is not called again, whatever redelivers or
duplicates the request (the workers' outbox republishing it, an executor killed
mid-chain, two executors taking copies of it at once).

Before a call, the executor claims it (a row in state ``calling`` with a lease that
outlasts the handler's timeout); right after the handler returns it records the
outcome. What a claim finds is judged by ``judge_claim`` (claims.py); ``sql_ledger.py`` makes
the read-and-write atomic.
"""

import asyncio
from datetime import datetime, timedelta

from txmail.core.backoff import until_up
from txmail.core.database import sqlite_path
from txmail.core.postgres_database import PostgresDatabase
from txmail.core.sqlite_database import SqliteDatabase
from txmail.core.stopping import unless_stopped
from txmail.fallback.ledger.claims import (
    CallState,
    Claim,
    ClaimVerdict,
    LedgerUnavailable,
)
from txmail.fallback.ledger.protocol import CallLedger
from txmail.fallback.ledger.sql_ledger import SqlLedger

__all__ = [
    "CallLedger",
    "CallState",
    "Claim",
    "ClaimVerdict",
    "LedgerUnavailable",
    "migrate_ledger",
    "open_ledger",
    "open_ledger_when_available",
    "purge_ledger",
]

PURGE_BATCH = 500  # small, so a purge never holds the lock for long
# A ledger that does not answer soon holds up every fallback: give up and wait instead.
COMMAND_TIMEOUT = 10.0


async def open_ledger(url: str) -> CallLedger:
    """Connect, create or migrate the ledger's table if needed, and return the ledger.
    ConfigError for a URL that cannot work; LedgerUnavailable for a database that is
    down (try again later)."""
    path = sqlite_path(url)
    ledger = SqlLedger(
        PostgresDatabase(url, LedgerUnavailable, command_timeout=COMMAND_TIMEOUT)
        if path is None
        else SqliteDatabase(path, LedgerUnavailable)
    )
    await ledger.open()
    return ledger


async def migrate_ledger(url: str) -> None:
    """Create or migrate the ledger's table, and close (for ``txmail migrate``)."""
    ledger = await open_ledger(url)
    await ledger.close()


async def open_ledger_when_available(url: str, stop: asyncio.Event) -> CallLedger | None:
    """Open the ledger, waiting for the database to come up with growing waits, one log
    line each; None when stopped first."""
    opening = until_up(lambda: open_ledger(url), "call ledger", (LedgerUnavailable,))
    return await unless_stopped(opening, stop)


async def purge_ledger(ledger: CallLedger, retention: timedelta, now: datetime) -> int:
    """Delete the rows last changed longer than ``retention`` ago; return how many."""
    total = 0
    while True:
        purged = await ledger.purge(now - retention, PURGE_BATCH)
        total += purged
        if purged < PURGE_BATCH:
            return total

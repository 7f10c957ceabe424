"""The ledger's schema, versioned apart from the workers' (in its own version table,
fallback_ledger_migrations), so the executor migrates it without knowing theirs. Append
versions; never edit one that has shipped. Times: microseconds since the epoch in
SQLite, timestamptz in PostgreSQL."""

from typing import Final

from txmail.core.database import Migration


def _calls_table(time_type: str) -> str:
    return f"""CREATE TABLE fallback_calls (
        idempotency_key TEXT NOT NULL,
        handler TEXT NOT NULL,
        state TEXT NOT NULL,
        owner TEXT NOT NULL,
        lease_until {time_type} NOT NULL,
        replays INTEGER NOT NULL,
        calls INTEGER NOT NULL,
        created_at {time_type} NOT NULL,
        updated_at {time_type} NOT NULL,
        PRIMARY KEY (idempotency_key, handler)
    )"""


_INDEX = "CREATE INDEX fallback_calls_updated_at ON fallback_calls (updated_at)"

SQLITE: Final[tuple[Migration, ...]] = ((1, (_calls_table("INTEGER"), _INDEX)),)
POSTGRES: Final[tuple[Migration, ...]] = ((1, (_calls_table("TIMESTAMPTZ"), _INDEX)),)

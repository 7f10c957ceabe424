"""The ledger's schema, versioned apart from the workers' (in its own version table,
fallback_ledger_migrations), so the executor migrates it without knowing theirs. Append
versions; never change what one makes on a database that has it. One column list for
both dialects (``txmail.core.sql``)."""

from typing import Final

from txmail.core.database import Migration
from txmail.core.sql import Column, Dialect, Kind

VERSIONS_TABLE = "fallback_ledger_migrations"

CALLS: Final = (
    Column("idempotency_key", Kind.TEXT, "NOT NULL"),
    Column("handler", Kind.TEXT, "NOT NULL"),
    Column("state", Kind.TEXT, "NOT NULL"),
    Column("owner", Kind.TEXT, "NOT NULL"),
    Column("lease_until", Kind.TIME, "NOT NULL"),
    Column("replays", Kind.INTEGER, "NOT NULL"),
    Column("calls", Kind.INTEGER, "NOT NULL"),
    Column("created_at", Kind.TIME, "NOT NULL"),
    Column("updated_at", Kind.TIME, "NOT NULL"),
)


def migrations(dialect: Dialect) -> tuple[Migration, ...]:
    return (
        (
            1,
            (
                dialect.create_table(
                    "fallback_calls", CALLS, "PRIMARY KEY (idempotency_key, handler)"
                ),
                "CREATE INDEX fallback_calls_updated_at ON fallback_calls (updated_at)",
            ),
        ),
    )

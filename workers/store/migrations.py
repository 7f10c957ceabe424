"""Versioned schema changes, applied in order by whichever writer comes first (`txmail
worker`, `txmail run`, `txmail migrate`); readers only check the version.

Append new versions; never change what one makes on a database that has it. Every
table is one column list, written once for both dialects (``txmail.core.sql``: times
are microseconds since the epoch in SQLite, timestamptz in PostgreSQL).
"""

from collections.abc import Sequence
from typing import Final

from txmail.core.database import Migration
from txmail.core.sql import POSTGRES as POSTGRES_DIALECT
from txmail.core.sql import Column, Dialect, Kind
from txmail.workers.health.tables import health_tables
from txmail.workers.store.protocol import NotMigrated

HOW_TO_MIGRATE = "run `txmail migrate` or start a worker"


def require_migrated(version: int | None, migrations: Sequence[Migration]) -> None:
    """Raise NotMigrated unless ``version`` (the highest applied, None without the
    migrations table) has every migration this txmail knows."""
    needed = migrations[-1][0]
    if version is None:
        raise NotMigrated(f"no txmail tables in this database: {HOW_TO_MIGRATE}")
    if version < needed:
        raise NotMigrated(
            f"the txmail tables in this database are at version {version}, this txmail "
            f"needs version {needed}: {HOW_TO_MIGRATE}"
        )


# The messages table as version 1 made it on SQLite. PostgreSQL's version 1 made
# `outcome`, `summary` and the times looser (for placeholder rows no longer written);
# version 4 brings it to this shape.
MESSAGES: Final = (
    Column("message_key", Kind.TEXT, "PRIMARY KEY"),
    Column("dispatch_id", Kind.TEXT),
    Column("external_send_id", Kind.TEXT),
    Column("campaign_api_id", Kind.TEXT),
    Column("outcome", Kind.TEXT, "NOT NULL"),
    Column("reason", Kind.TEXT),
    Column("deadline", Kind.TIME),
    Column("decision_trigger", Kind.TEXT),
    Column("summary", Kind.TEXT, "NOT NULL"),
    Column("decision_request", Kind.TEXT),
    Column("decision_published_at", Kind.TIME),
    Column("publish_after", Kind.TIME),
    Column("created_at", Kind.TIME, "NOT NULL"),
    Column("updated_at", Kind.TIME, "NOT NULL"),
)
EVENTS: Final = (
    Column("event_id", Kind.TEXT, "PRIMARY KEY"),
    Column("message_key", Kind.TEXT, "NOT NULL"),
    Column("kind", Kind.TEXT, "NOT NULL"),
    Column("label", Kind.TEXT, "NOT NULL"),
    Column("received_at", Kind.TIME, "NOT NULL"),
    Column("body", Kind.TEXT, "NOT NULL"),
)
# One row per worker process: what it has applied, for the watermark.
WORKER_PROGRESS: Final = (
    Column("worker_id", Kind.TEXT, "PRIMARY KEY"),
    Column("heartbeat", Kind.TIME, "NOT NULL"),
    Column("applied_until", Kind.TIME),
    Column("event_time", Kind.TIME),
    Column("heard_at", Kind.TIME),
    # Added by version 3: the earliest Braze time of a postback the worker holds but
    # has not applied.
    Column("holding", Kind.TIME),
)


def columns(table: Sequence[Column], *names: str) -> tuple[Column, ...]:
    """The named columns of ``table``, in the order named."""
    by_name = {c.name: c for c in table}
    return tuple(by_name[name] for name in names)


def migrations(dialect: Dialect) -> tuple[Migration, ...]:
    holding = WORKER_PROGRESS[-1]
    loosened = (
        # Only PostgreSQL's version 1 made these columns looser than MESSAGES says. No
        # committed row lacks a summary (placeholders were filled in their transaction).
        (
            "DELETE FROM messages WHERE summary IS NULL",
            """ALTER TABLE messages ALTER COLUMN outcome DROP DEFAULT,
                ALTER COLUMN summary SET NOT NULL,
                ALTER COLUMN created_at DROP DEFAULT,
                ALTER COLUMN updated_at DROP DEFAULT""",
        )
        if dialect is POSTGRES_DIALECT
        else ()
    )
    return (
        (
            1,
            (
                dialect.create_table("messages", MESSAGES),
                "CREATE INDEX messages_dispatch_id ON messages (dispatch_id)",
                "CREATE INDEX messages_external_send_id ON messages (external_send_id)",
                "CREATE INDEX messages_campaign_api_id ON messages (campaign_api_id)",
                "CREATE INDEX messages_deadline ON messages (deadline) WHERE deadline IS NOT NULL",
                """CREATE INDEX messages_unpublished ON messages (publish_after)
                    WHERE publish_after IS NOT NULL AND decision_published_at IS NULL""",
                "CREATE INDEX messages_created_at ON messages (created_at)",
                dialect.create_table("events", EVENTS),
                "CREATE INDEX events_message_key ON events (message_key, received_at)",
            ),
        ),
        (2, (dialect.create_table("worker_progress", WORKER_PROGRESS[:-1]),)),
        (
            3,
            (
                f"ALTER TABLE worker_progress ADD COLUMN {holding.name} "
                f"{dialect.types[holding.kind]}",
            ),
        ),
        (4, loosened),
        (
            5,
            # The console's lists: recent failures and fallback attempts. Partial, so the
            # write path of every other message and event pays nothing for them.
            (
                """CREATE INDEX messages_failed ON messages (updated_at)
                    WHERE outcome IN ('aborted', 'bounced', 'timed_out')""",
                """CREATE INDEX events_fallback_attempts ON events (received_at)
                    WHERE kind = 'fallback_attempt'""",
            ),
        ),
        (6, health_tables(dialect)),
    )


# The failed messages, in the words of migration 5's partial index, so that both
# databases can use it (neither matches an index to a predicate given as parameters).
RECENT_FAILURES = """SELECT message_key, dispatch_id, external_send_id, campaign_api_id,
    outcome, reason, decision_trigger, updated_at FROM messages
    WHERE outcome IN ('aborted', 'bounced', 'timed_out')"""

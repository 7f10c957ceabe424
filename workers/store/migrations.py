"""Versioned schema changes, applied in order by whichever writer comes first (`txmail
worker`, `txmail run`, `txmail migrate`); readers only check the version.

Append new versions; never edit one that has shipped. Times are microseconds since
the epoch in SQLite (integers sort and index well there) and timestamptz in PostgreSQL.
"""

from collections.abc import Sequence
from typing import Final

from txmail.core.database import Migration
from txmail.workers.health.tables import HEALTH_TABLES_POSTGRES, HEALTH_TABLES_SQLITE
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


SQLITE: Final[tuple[Migration, ...]] = (
    (
        1,
        (
            """CREATE TABLE messages (
                message_key TEXT PRIMARY KEY,
                dispatch_id TEXT,
                external_send_id TEXT,
                campaign_api_id TEXT,
                outcome TEXT NOT NULL,
                reason TEXT,
                deadline INTEGER,
                decision_trigger TEXT,
                summary TEXT NOT NULL,
                decision_request TEXT,
                decision_published_at INTEGER,
                publish_after INTEGER,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL
            )""",
            "CREATE INDEX messages_dispatch_id ON messages (dispatch_id)",
            "CREATE INDEX messages_external_send_id ON messages (external_send_id)",
            "CREATE INDEX messages_campaign_api_id ON messages (campaign_api_id)",
            "CREATE INDEX messages_deadline ON messages (deadline) WHERE deadline IS NOT NULL",
            """CREATE INDEX messages_unpublished ON messages (publish_after)
                WHERE publish_after IS NOT NULL AND decision_published_at IS NULL""",
            "CREATE INDEX messages_created_at ON messages (created_at)",
            """CREATE TABLE events (
                event_id TEXT PRIMARY KEY,
                message_key TEXT NOT NULL,
                kind TEXT NOT NULL,
                label TEXT NOT NULL,
                received_at INTEGER NOT NULL,
                body TEXT NOT NULL
            )""",
            "CREATE INDEX events_message_key ON events (message_key, received_at)",
        ),
    ),
    (
        2,
        (
            # One row per worker process: what it has applied, for the watermark.
            """CREATE TABLE worker_progress (
                worker_id TEXT PRIMARY KEY,
                heartbeat INTEGER NOT NULL,
                applied_until INTEGER,
                event_time INTEGER,
                heard_at INTEGER
            )""",
        ),
    ),
    (
        3,
        # The earliest Braze time of a postback the worker holds but has not applied.
        ("ALTER TABLE worker_progress ADD COLUMN holding INTEGER",),
    ),
    (4, HEALTH_TABLES_SQLITE),
)

POSTGRES: Final[tuple[Migration, ...]] = (
    (
        1,
        (
            """CREATE TABLE messages (
                message_key TEXT PRIMARY KEY,
                dispatch_id TEXT,
                external_send_id TEXT,
                campaign_api_id TEXT,
                outcome TEXT NOT NULL DEFAULT 'in_flight',
                reason TEXT,
                deadline TIMESTAMPTZ,
                decision_trigger TEXT,
                summary TEXT,
                decision_request TEXT,
                decision_published_at TIMESTAMPTZ,
                publish_after TIMESTAMPTZ,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX messages_dispatch_id ON messages (dispatch_id)",
            "CREATE INDEX messages_external_send_id ON messages (external_send_id)",
            "CREATE INDEX messages_campaign_api_id ON messages (campaign_api_id)",
            "CREATE INDEX messages_deadline ON messages (deadline) WHERE deadline IS NOT NULL",
            """CREATE INDEX messages_unpublished ON messages (publish_after)
                WHERE publish_after IS NOT NULL AND decision_published_at IS NULL""",
            "CREATE INDEX messages_created_at ON messages (created_at)",
            """CREATE TABLE events (
                event_id TEXT PRIMARY KEY,
                message_key TEXT NOT NULL,
                kind TEXT NOT NULL,
                label TEXT NOT NULL,
                received_at TIMESTAMPTZ NOT NULL,
                body TEXT NOT NULL
            )""",
            "CREATE INDEX events_message_key ON events (message_key, received_at)",
        ),
    ),
    (
        2,
        (
            # One row per worker process: what it has applied, for the watermark.
            """CREATE TABLE worker_progress (
                worker_id TEXT PRIMARY KEY,
                heartbeat TIMESTAMPTZ NOT NULL,
                applied_until TIMESTAMPTZ,
                event_time TIMESTAMPTZ,
                heard_at TIMESTAMPTZ
            )""",
        ),
    ),
    (
        3,
        # The earliest Braze time of a postback the worker holds but has not applied.
        ("ALTER TABLE worker_progress ADD COLUMN holding TIMESTAMPTZ",),
    ),
    (4, HEALTH_TABLES_POSTGRES),
)

"""The health tables, made by the store's migration 5 (workers/store/migrations.py).

One row per send with its Braze times (``health_sends``), the deployment's health per
scope (``health_state``), its outbox of changes (``health_changes``) and the learned
timeouts (``learned_timeouts``). One column list per table, for both dialects.
"""

from typing import Final

from txmail.core.sql import POSTGRES, Column, Dialect, Kind

# When a send settled: failed, timed out, or delivered. Indexed as written, so the
# window's query must use exactly this expression.
SETTLED_AT: Final = "coalesce(failed_at, timed_out_at, delivered_at)"

HEALTH_SENDS: Final = (
    Column("message_key", Kind.TEXT, "PRIMARY KEY"),
    Column("campaign", Kind.TEXT, "NOT NULL"),  # '' for a send without one
    Column("sent_at", Kind.TIME),
    Column("delivered_at", Kind.TIME),
    Column("failed_at", Kind.TIME),
    Column("failure", Kind.TEXT),
    Column("timed_out_at", Kind.TIME),
    Column("lag", Kind.BIG_INTEGER),  # microseconds
)
HEALTH_STATE: Final = (
    Column("scope", Kind.TEXT, "PRIMARY KEY"),
    Column("health", Kind.TEXT, "NOT NULL"),
    Column("since", Kind.TIME),
    Column("calm_since", Kind.TIME),
    Column("figures", Kind.TEXT, "NOT NULL"),
    Column("evaluated_at", Kind.TIME, "NOT NULL"),
)
HEALTH_CHANGES: Final = (
    Column("change_id", Kind.TEXT, "PRIMARY KEY"),
    Column("at", Kind.TIME, "NOT NULL"),
    Column("body", Kind.TEXT, "NOT NULL"),
    Column("published_at", Kind.TIME),
    Column("publish_after", Kind.TIME, "NOT NULL"),
)
LEARNED_TIMEOUTS: Final = (
    Column("campaign", Kind.TEXT, "PRIMARY KEY"),
    Column("timeout", Kind.BIG_INTEGER, "NOT NULL"),  # microseconds
    Column("sends", Kind.INTEGER, "NOT NULL"),
    Column("learned_at", Kind.TIME, "NOT NULL"),
)


def health_tables(dialect: Dialect) -> tuple[str, ...]:
    # PostgreSQL wants an indexed expression in parentheses of its own.
    settled = f"({SETTLED_AT})" if dialect is POSTGRES else SETTLED_AT
    return (
        dialect.create_table("health_sends", HEALTH_SENDS),
        f"CREATE INDEX health_sends_settled ON health_sends ({settled})",
        """CREATE INDEX health_sends_delivered ON health_sends (campaign, delivered_at)
            WHERE delivered_at IS NOT NULL AND sent_at IS NOT NULL""",
        dialect.create_table("health_state", HEALTH_STATE),
        dialect.create_table("health_changes", HEALTH_CHANGES),
        """CREATE INDEX health_changes_unpublished ON health_changes (publish_after)
            WHERE published_at IS NULL""",
        dialect.create_table("learned_timeouts", LEARNED_TIMEOUTS),
    )

"""The health tables, created by the store's migration 4 (workers/store/migrations.py).

One row per send with its Braze times (``health_sends``), the deployment's health per
scope (``health_state``), its outbox of changes (``health_changes``) and the learned
timeouts (``learned_timeouts``). Times are microseconds since the epoch in both
databases, so that one set of queries serves both.
"""

from typing import Final

# When a send settled: failed, timed out, or delivered. Indexed as written, so the
# window's query must use exactly this expression.
SETTLED_AT: Final = "coalesce(failed_at, timed_out_at, delivered_at)"


def _tables(settled_index: str) -> tuple[str, ...]:
    return (
        """CREATE TABLE health_sends (
            message_key TEXT PRIMARY KEY,
            campaign TEXT NOT NULL,
            sent_at BIGINT,
            delivered_at BIGINT,
            failed_at BIGINT,
            failure TEXT,
            timed_out_at BIGINT,
            lag BIGINT
        )""",
        f"CREATE INDEX health_sends_settled ON health_sends ({settled_index})",
        """CREATE INDEX health_sends_delivered ON health_sends (campaign, delivered_at)
            WHERE delivered_at IS NOT NULL AND sent_at IS NOT NULL""",
        """CREATE TABLE health_state (
            scope TEXT PRIMARY KEY,
            health TEXT NOT NULL,
            since BIGINT,
            calm_since BIGINT,
            figures TEXT NOT NULL,
            evaluated_at BIGINT NOT NULL
        )""",
        """CREATE TABLE health_changes (
            change_id TEXT PRIMARY KEY,
            at BIGINT NOT NULL,
            body TEXT NOT NULL,
            published_at BIGINT,
            publish_after BIGINT NOT NULL
        )""",
        """CREATE INDEX health_changes_unpublished ON health_changes (publish_after)
            WHERE published_at IS NULL""",
        """CREATE TABLE learned_timeouts (
            campaign TEXT PRIMARY KEY,
            timeout BIGINT NOT NULL,
            sends INTEGER NOT NULL,
            learned_at BIGINT NOT NULL
        )""",
    )


HEALTH_TABLES_SQLITE: Final = _tables(SETTLED_AT)
# PostgreSQL wants an indexed expression in parentheses of its own.
HEALTH_TABLES_POSTGRES: Final = _tables(f"({SETTLED_AT})")

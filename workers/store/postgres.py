"""The PostgreSQL store: many workers against one database (row locks, ``SKIP LOCKED``;
see ``sql_store.py``)."""

from datetime import timedelta

from txmail.core.postgres_database import PostgresDatabase
from txmail.workers.store.protocol import StoreUnavailable
from txmail.workers.store.sql_store import SqlStore
from txmail.workers.timeouts import DeliveryTimeouts


class PostgresStore(SqlStore):
    def __init__(self, url: str, timeouts: DeliveryTimeouts, republish_after: timedelta) -> None:
        super().__init__(
            PostgresDatabase(url, StoreUnavailable, command_timeout=60), timeouts, republish_after
        )

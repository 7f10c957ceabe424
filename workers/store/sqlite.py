"""The SQLite store: one file in WAL mode, for a single node (``txmail run``).

A reader (api, status) never creates the file or the tables: it opens an existing file
on its first read, so one started before any worker answers once a worker made it.
"""

from datetime import timedelta
from pathlib import Path

from txmail.core.sqlite_database import SqliteDatabase
from txmail.workers.store.migrations import HOW_TO_MIGRATE
from txmail.workers.store.protocol import NotMigrated, StoreUnavailable
from txmail.workers.store.sql_store import SqlStore
from txmail.workers.timeouts import DeliveryTimeouts


class SqliteStore(SqlStore):
    def __init__(self, path: Path, timeouts: DeliveryTimeouts, republish_after: timedelta) -> None:
        self._file = SqliteDatabase(path, StoreUnavailable)
        self._path = path
        super().__init__(self._file, timeouts, republish_after)

    async def open_for_reading(self) -> None:
        """Nothing to do yet: a reader opens the file on its first read."""

    async def _before_reading(self) -> None:
        if not await self._file.open_existing():
            raise NotMigrated(
                f"there is no SQLite database at {self._path}: check TXMAIL_DATABASE_URL, "
                f"or {HOW_TO_MIGRATE}"
            )

"""The state store: the protocol, and a backend chosen by the database URL's scheme.

Only the processes that write (worker, run, `txmail migrate`) create or change the
schema; readers (api, status) change nothing, so a read-only database user serves them.
"""

from datetime import timedelta

from txmail.core.database import sqlite_path
from txmail.workers.store.postgres import PostgresStore
from txmail.workers.store.protocol import Store
from txmail.workers.store.sql_store import SqlStore
from txmail.workers.store.sqlite import SqliteStore
from txmail.workers.timeouts import DeliveryTimeouts


def _store_for(url: str, timeouts: DeliveryTimeouts, republish_after: timedelta) -> SqlStore:
    path = sqlite_path(url)
    if path is None:
        return PostgresStore(url, timeouts, republish_after)
    return SqliteStore(path, timeouts, republish_after)


async def open_store(
    url: str,
    timeouts: DeliveryTimeouts,
    republish_after: timedelta = timedelta(seconds=10),
    *,
    read_only: bool = False,
) -> Store:
    """Connect and bring the schema up to date, and return the store for ``url``.

    ``read_only`` creates and changes nothing (no file, no tables); its reads raise
    NotMigrated until a writer has created the tables.
    """
    store = _store_for(url, timeouts, republish_after)
    if read_only:
        await store.open_for_reading()
        return store
    await store.open()
    try:
        await store.migrate()
    except BaseException:
        await store.close()
        raise
    return store


async def migrate_schema(url: str, timeouts: DeliveryTimeouts) -> list[int]:
    """Bring the schema up to date; returns the versions applied now (none: it was)."""
    store = _store_for(url, timeouts, timedelta(seconds=10))
    await store.open()
    try:
        return await store.migrate()
    finally:
        await store.close()

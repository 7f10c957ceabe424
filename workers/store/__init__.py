"""The state store: the protocol, and a backend chosen by the database URL's scheme."""

from datetime import timedelta

from txmail.database import sqlite_path
from workers.store.postgres import PostgresStore
from workers.store.protocol import Store
from workers.store.sqlite import SqliteStore
from workers.timeouts import DeliveryTimeouts


async def open_store(
    url: str, timeouts: DeliveryTimeouts, republish_after: timedelta = timedelta(seconds=10)
) -> Store:
    """Connect, migrate the schema if needed, and return the store for ``url``."""
    path = sqlite_path(url)
    store: SqliteStore | PostgresStore = (
        PostgresStore(url, timeouts, republish_after)
        if path is None
        else SqliteStore(path, timeouts, republish_after)
    )
    await store.open()
    return store

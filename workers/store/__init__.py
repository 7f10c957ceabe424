"""The state store: the protocol, and a backend chosen by the database URL's scheme."""

from datetime import timedelta
from pathlib import Path

from txmail.errors import ConfigError
from workers.store.postgres import PostgresStore
from workers.store.protocol import Store
from workers.store.sqlite import SqliteStore
from workers.timeouts import DeliveryTimeouts


async def open_store(
    url: str, timeouts: DeliveryTimeouts, republish_after: timedelta = timedelta(seconds=10)
) -> Store:
    """Connect, migrate the schema if needed, and return the store for ``url``."""
    if url.startswith("sqlite:///"):
        sqlite = SqliteStore(Path(url.removeprefix("sqlite:///")), timeouts, republish_after)
        await sqlite.open()
        return sqlite
    if url.startswith(("postgresql://", "postgres://")):
        postgres = PostgresStore(url, timeouts, republish_after)
        await postgres.open()
        return postgres
    raise ConfigError(
        f"TXMAIL_DATABASE_URL: {url.split(':', 1)[0]!r} is not supported; "
        "use sqlite:///path/to/file.db or postgresql://user@host/db"
    )

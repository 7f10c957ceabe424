"""Plumbing shared by everything that keeps state in TXMAIL_DATABASE_URL (the workers'
store, the executor's call ledger): which backend a URL names, opening a SQLite file
the same way from every process, and how PostgreSQL errors are classified. Running SQL
on either is ``sql.py``'s, ``sqlite_database.py``'s and ``postgres_database.py``'s."""

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

from txmail.core.errors import ConfigError

BUSY_TIMEOUT_MS = 10_000

# A schema version and its statements. Each user of the database keeps its own list and
# its own version table, so that it migrates without knowing the others'.
Migration = tuple[int, tuple[str, ...]]
PostgresConnection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# The database is down, restarting, or unreachable: the caller retries later.
POSTGRES_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,
)
# A URL that can never work: no such database or role, a wrong password, a bad option.
POSTGRES_MISCONFIGURED = (
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.ClientConfigurationError,
)


def sqlite_path(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names; None for a PostgreSQL URL; ConfigError else."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return None
    raise ConfigError(
        f"TXMAIL_DATABASE_URL: {url.split(':', 1)[0]!r} is not supported; "
        "use sqlite:///path/to/file.db or postgresql://user@host/db"
    )


def to_micros(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), waiting up to the
    busy timeout for another process's lock, on a file in WAL mode."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"TXMAIL_DATABASE_URL: cannot make the directory of {path}: {error.strerror}"
        ) from None
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _switch_to_wal(connection)
    # In WAL mode NORMAL loses no committed transaction on a process crash, only on
    # a power loss, and saves an fsync per commit.
    connection.execute("PRAGMA synchronous = NORMAL")
    return connection


def _switch_to_wal(connection: sqlite3.Connection) -> None:
    """Turn on WAL mode. Switching takes an exclusive lock and, unlike other statements,
    fails at once instead of waiting for the busy timeout while another process opening
    the same new file holds one: so try again for as long as the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)

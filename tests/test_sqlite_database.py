"""SQLite's connection shared by a process's transactions, with other processes on the file."""

import asyncio
import sqlite3
from contextlib import closing, suppress
from pathlib import Path

from tests.support.waiting import wait_until
from txmail.core.database import connect_sqlite
from txmail.core.sqlite_database import SqliteDatabase


class Unavailable(Exception):
    pass


async def test_a_transaction_cancelled_while_waiting_for_the_file_leaves_none_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "txmail.sqlite"
    database = SqliteDatabase(path, Unavailable)
    await database.open()
    await database.autocommit(lambda db: db.execute("CREATE TABLE t (x INTEGER)"))
    started: list[str] = []
    # Internal, to know when its BEGIN IMMEDIATE waits on the file.
    connection = database._connection
    assert connection is not None
    connection.set_trace_callback(started.append)
    with closing(connect_sqlite(path)) as other_process:
        other_process.execute("BEGIN IMMEDIATE")  # another process writing
        # A stopping worker cancels its batch (``unless_stopped``) while it waits.
        waiting = asyncio.create_task(
            database.transaction(lambda db: db.execute("INSERT INTO t VALUES (1)"))
        )
        await wait_until(lambda: "BEGIN IMMEDIATE" in started, what="the BEGIN to wait")
        waiting.cancel()
        other_process.execute("COMMIT")
        with suppress(asyncio.CancelledError):
            await waiting

        # This process writes on, and leaves the file to the others in between.
        await database.transaction(lambda db: db.execute("INSERT INTO t VALUES (2)"))
        other_process.execute("PRAGMA busy_timeout = 0")
        try:
            other_process.execute("INSERT INTO t VALUES (3)")
        except sqlite3.OperationalError as error:
            raise AssertionError(f"the file is still locked: {error}") from None
    rows = await database.transaction(lambda db: db.fetch("SELECT x FROM t ORDER BY x"))
    assert rows == [(2,), (3,)]
    await database.close()

"""Reads never write: only writers (worker, run, `txmail migrate`) create the tables, and
the readers (api, status) work with a database user that may only SELECT."""

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest

from tests.support.factories import postback
from tests.support.ports import free_port
from tests.support.processes import spawn, wait_for_line
from tests.support.waiting import wait_until
from txmail.cli import build_parser, exit_code_of
from txmail.core.command import Command, Configuration
from txmail.core.database import Migration
from txmail.core.settings import Settings
from txmail.core.sql import SQLITE
from txmail.workers.api import create_api_app
from txmail.workers.store import migrate_schema, open_store
from txmail.workers.store.migrations import MESSAGES, migrations, require_migrated
from txmail.workers.store.protocol import NotMigrated
from txmail.workers.timeouts import DeliveryTimeouts

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMEOUTS = DeliveryTimeouts(timedelta(minutes=10))
NOT_MIGRATED = "run `txmail migrate` or start a worker"


async def _tables(database_url: str) -> list[str]:
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        return ["(the file)"] if await asyncio.to_thread(path.exists) else []
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    finally:
        await connection.close()
    return [r["tablename"] for r in rows]


async def _command(settings: Settings, *argv: str) -> int:
    # Parsed as the shell would; the command runs its own event loop, as from a shell.
    args = build_parser().parse_args(list(argv))
    command: Command = args.handler
    config = Configuration(settings, rules_file=None)
    return await asyncio.to_thread(exit_code_of, lambda: command(config, args))


async def test_reads_of_an_unmigrated_database_say_so_and_create_nothing(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    reader = await open_store(database_url, TIMEOUTS, read_only=True)
    try:
        for read in (reader.ping(), reader.find(dispatch_id="d1")):
            with pytest.raises(NotMigrated, match=NOT_MIGRATED):
                await read
        settings = Settings(database_url=database_url)
        assert await _command(settings, "status", "d1") == 2
        err = capsys.readouterr().err
        assert NOT_MIGRATED in err
        assert "Traceback" not in err
        assert await _tables(database_url) == []

        # Once a writer made the tables, the same reader answers, without a restart.
        assert await _command(settings, "migrate") == 0
        assert "applied migrations 1" in capsys.readouterr().out
        await reader.ping()
        assert await reader.find(dispatch_id="d1") is None
    finally:
        await reader.close()
    assert await _command(settings, "migrate") == 0
    assert capsys.readouterr().out.startswith("nothing to do")


async def test_an_sqlite_file_without_the_tables_is_not_migrated(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).close()
    reader = await open_store(f"sqlite:///{path}", TIMEOUTS, read_only=True)
    try:
        with pytest.raises(NotMigrated, match="no txmail tables in this database"):
            await reader.ping()
    finally:
        await reader.close()


def test_tables_older_than_this_txmail_are_not_migrated_either() -> None:
    known: list[Migration] = [(1, ()), (2, ())]
    require_migrated(2, known)
    with pytest.raises(NotMigrated, match="at version 1, this txmail needs version 2: run"):
        require_migrated(1, known)


async def test_the_api_answers_503_until_the_tables_exist(database_url: str) -> None:
    reader = await open_store(database_url, TIMEOUTS, read_only=True)
    app = create_api_app(reader)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert NOT_MIGRATED in (await response.json())["message"]
            async with session.get(f"{base}/v1/messages/d1") as response:
                assert response.status == 503
                body = await response.json()
                assert body["error"] == "not_migrated"
                assert NOT_MIGRATED in body["message"]
            assert await _tables(database_url) == []
            assert await migrate_schema(database_url, TIMEOUTS) == [
                v for v, _ in migrations(SQLITE)
            ]
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 200
    finally:
        await runner.cleanup()
        await reader.close()


# --- a PostgreSQL role that may only read ---------------------------------------------


@pytest.fixture
async def read_only_url(postgres_schema_url: str) -> AsyncIterator[str]:
    """The schema's URL as a new role with USAGE on it and SELECT on its tables only."""
    schema = parse_qs(urlsplit(postgres_schema_url).query)["search_path"][0]
    role = f"txmail_reader_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_schema_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        # Tables a writer (this admin) creates later are readable too.
        await admin.execute(
            f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" GRANT SELECT ON TABLES TO "{role}"'
        )
        yield postgres_schema_url.replace("postgres@", f"{role}@", 1)
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
    finally:
        await admin.close()


async def test_a_read_only_role_serves_status_and_the_api(
    postgres_schema_url: str, read_only_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    reader = Settings(database_url=read_only_url)
    # It cannot make the tables, and says so instead of a traceback.
    assert await _command(reader, "migrate") == 2
    assert "may not create the txmail tables" in capsys.readouterr().err
    assert await _command(reader, "status", "d1") == 2
    assert NOT_MIGRATED in capsys.readouterr().err

    writer = await open_store(postgres_schema_url, TIMEOUTS)
    await writer.apply([postback("d1", "bounced", NOW, reason="550 no such user")], NOW)
    await writer.close()

    assert await _command(reader, "status", "d1") == 0
    assert capsys.readouterr().out.startswith("bounced: 550 no such user")
    port = free_port()
    process = await spawn(
        "api",
        env={
            **os.environ,
            "TXMAIL_DATABASE_URL": read_only_url,
            "TXMAIL_API_PORT": str(port),
            "TXMAIL_API_TOKEN": "",
            "TXMAIL_API_READ_TOKEN": "",
            "TXMAIL_API_HOST": "",
        },
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        # No token: it says so, and listens on this machine only.
        await wait_for_line(process, b"listens on 127.0.0.1 only")
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(ready, 20, "the api to answer")
            async with session.get(f"http://127.0.0.1:{port}/v1/messages/d1") as response:
                assert response.status == 200
                assert (await response.json())["outcome"] == "bounced"
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 15) == 0


def _unwritable(tmp_path: Path) -> list[Path]:
    a_directory = tmp_path / "a-directory"
    a_directory.mkdir()
    # /proc takes no new files, even from root (who may write a chmod-ed directory).
    return [a_directory, Path(f"/proc/txmail-test-{uuid.uuid4().hex[:8]}.db")]


async def test_a_sqlite_path_the_worker_cannot_write_fails_at_start_naming_it(
    tmp_path: Path,
) -> None:
    for path in _unwritable(tmp_path):
        worker = await spawn(
            "worker", env={**os.environ, "TXMAIL_DATABASE_URL": f"sqlite:///{path}"}
        )
        try:
            _, err = await asyncio.wait_for(worker.communicate(), 20)
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        assert worker.returncode == 2
        assert f"cannot write the SQLite database {path}" in err.decode()
        assert b"Traceback" not in err


async def _table_names(database_url: str) -> set[str]:
    path = database_url.removeprefix("sqlite:///")
    if path != database_url:
        with sqlite3.connect(path) as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return set(await _tables(database_url))


async def test_migrate_creates_the_executors_call_ledger_too(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # So the executor, too, can run as a user that may not create tables.
    assert await _command(Settings(database_url=database_url), "migrate") == 0
    assert "fallback_calls" in await _table_names(database_url)
    assert "call ledger" in capsys.readouterr().out


async def test_version_4_brings_an_older_postgres_messages_table_to_the_shared_shape(
    postgres_schema_url: str,
) -> None:
    writer = await open_store(postgres_schema_url, TIMEOUTS)
    await writer.apply([postback("d1", "bounced", NOW, reason="550 no such user")], NOW)
    await writer.close()
    admin = await asyncpg.connect(postgres_schema_url)
    try:
        # Back to the shape version 1 used to make on PostgreSQL, with the row in it.
        await admin.execute(
            """ALTER TABLE messages ALTER COLUMN outcome SET DEFAULT 'in_flight',
                ALTER COLUMN summary DROP NOT NULL,
                ALTER COLUMN created_at SET DEFAULT now(),
                ALTER COLUMN updated_at SET DEFAULT now();
            DELETE FROM schema_migrations WHERE version = 4"""
        )
        assert await migrate_schema(postgres_schema_url, TIMEOUTS) == [4]
        columns = await admin.fetch(
            "SELECT column_name, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'messages'"
        )
    finally:
        await admin.close()
    not_null = {c.name for c in MESSAGES if c.constraint in ("NOT NULL", "PRIMARY KEY")}
    assert {c["column_name"] for c in columns if c["is_nullable"] == "NO"} == not_null
    assert [c["column_name"] for c in columns if c["column_default"] is not None] == []
    reader = await open_store(postgres_schema_url, TIMEOUTS, read_only=True)
    try:
        found = await reader.find(dispatch_id="d1")
    finally:
        await reader.close()
    assert found is not None
    assert found.outcome == "bounced"

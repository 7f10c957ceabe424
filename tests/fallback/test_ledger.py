"""The call ledger on real SQLite and PostgreSQL: claims, outcomes, leases, replays,
several claimers at once, retention, and a database that is away."""

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from datetime import timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.ports import free_port
from tests.support.waiting import wait_until
from txmail.core.errors import ConfigError
from txmail.core.events import utc_now
from txmail.fallback.ledger import (
    CallLedger,
    CallState,
    ClaimVerdict,
    LedgerUnavailable,
    migrate_ledger,
    open_ledger,
    open_ledger_when_available,
    purge_ledger,
)
from txmail.workers.store import open_store
from txmail.workers.timeouts import DeliveryTimeouts

LEASE = timedelta(seconds=30)


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[CallLedger]:
    ledger = await open_ledger(database_url)
    yield ledger
    await ledger.close()


async def test_a_call_is_granted_once_and_a_success_is_never_called_again(
    ledger: CallLedger,
) -> None:
    first = await ledger.claim("txm_1", "sms", 0, LEASE)
    assert first.verdict is ClaimVerdict.CALL
    assert (await ledger.claim("txm_1", "sms", 0, LEASE)).verdict is ClaimVerdict.BUSY
    assert (await ledger.claim("txm_1", "hook", 0, LEASE)).verdict is ClaimVerdict.CALL

    await ledger.record(first, CallState.SUCCEEDED)
    assert (await ledger.claim("txm_1", "sms", 0, LEASE)).verdict is ClaimVerdict.SUCCEEDED
    # Not even for a replay: it reached the customer.
    assert (await ledger.claim("txm_1", "sms", 1, LEASE)).verdict is ClaimVerdict.SUCCEEDED


async def test_a_transient_failure_frees_the_call_at_once(ledger: CallLedger) -> None:
    claim = await ledger.claim("txm_1", "sms", 0, LEASE)
    await ledger.record(claim, CallState.FAILED_TRANSIENTLY)
    assert (await ledger.claim("txm_1", "sms", 0, LEASE)).verdict is ClaimVerdict.CALL


async def test_a_permanent_failure_blocks_copies_of_the_request_but_not_a_replay(
    ledger: CallLedger,
) -> None:
    claim = await ledger.claim("txm_1", "sms", 0, LEASE)
    await ledger.record(claim, CallState.FAILED_PERMANENTLY)
    verdict = (await ledger.claim("txm_1", "sms", 0, LEASE)).verdict
    assert verdict is ClaimVerdict.FAILED_PERMANENTLY

    replay = await ledger.claim("txm_1", "sms", 1, LEASE)
    assert replay.verdict is ClaimVerdict.CALL
    await ledger.record(replay, CallState.FAILED_PERMANENTLY)
    assert (await ledger.claim("txm_1", "sms", 1, LEASE)).verdict is ClaimVerdict.FAILED_PERMANENTLY
    assert (await ledger.claim("txm_1", "sms", 2, LEASE)).verdict is ClaimVerdict.CALL


async def test_an_expired_lease_is_an_outcome_lost_mid_call(ledger: CallLedger) -> None:
    crashed = await ledger.claim("txm_1", "sms", 0, timedelta(milliseconds=1))
    await asyncio.sleep(0.01)  # the lease must run out; nothing else is waited for
    again = await ledger.claim("txm_1", "sms", 0, LEASE)
    assert again.verdict is ClaimVerdict.CALL_AFTER_LOST_OUTCOME

    # The first caller's late failure does not free the call the second one holds ...
    await ledger.record(crashed, CallState.FAILED_TRANSIENTLY)
    assert (await ledger.claim("txm_1", "sms", 0, LEASE)).verdict is ClaimVerdict.BUSY
    # ... but a late success is a fact, whoever holds the row.
    await ledger.record(crashed, CallState.SUCCEEDED)
    assert (await ledger.claim("txm_1", "sms", 0, LEASE)).verdict is ClaimVerdict.SUCCEEDED


async def test_of_many_claimers_at_once_one_is_granted(database_url: str) -> None:
    ledgers = [await open_ledger(database_url) for _ in range(3)]
    try:
        claims = await asyncio.gather(
            *(ledgers[i % 3].claim("txm_1", "sms", 0, LEASE) for i in range(12))
        )
    finally:
        for ledger in ledgers:
            await ledger.close()
    verdicts = sorted(c.verdict.value for c in claims)
    assert verdicts == ["busy"] * 11 + ["call"]


async def test_rows_past_retention_are_purged(ledger: CallLedger) -> None:
    claim = await ledger.claim("txm_old", "sms", 0, LEASE)
    await ledger.record(claim, CallState.SUCCEEDED)
    assert await purge_ledger(ledger, timedelta(days=30), utc_now()) == 0
    assert await purge_ledger(ledger, timedelta(days=30), utc_now() + timedelta(days=31)) == 1
    assert (await ledger.claim("txm_old", "sms", 0, LEASE)).verdict is ClaimVerdict.CALL


async def test_the_ledger_lives_beside_the_workers_store(database_url: str) -> None:
    store = await open_store(database_url, DeliveryTimeouts(timedelta(minutes=10)))
    await store.close()
    await migrate_ledger(database_url)
    await migrate_ledger(database_url)  # a second migration finds it done
    ledger = await open_ledger(database_url)
    try:
        assert await ledger.ping()
        assert (await ledger.claim("txm_1", "sms", 0, LEASE)).verdict is ClaimVerdict.CALL
    finally:
        await ledger.close()
    store = await open_store(database_url, DeliveryTimeouts(timedelta(minutes=10)))
    await store.close()


async def test_an_unreachable_database_is_reported_not_raised_as_a_crash() -> None:
    with pytest.raises(LedgerUnavailable):
        await open_ledger(f"postgresql://postgres@127.0.0.1:{free_port()}/test")


async def test_a_database_url_of_another_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="TXMAIL_DATABASE_URL"):
        await open_ledger("mysql://localhost/txmail")


async def test_ping_says_whether_the_database_answers(database_url: str) -> None:
    ledger = await open_ledger(database_url)
    assert await ledger.ping()
    await ledger.close()
    assert not await ledger.ping()


async def test_a_ledger_that_is_down_is_retried_with_growing_waits() -> None:
    stop = asyncio.Event()
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    with capture_logs() as logs:
        opening = asyncio.create_task(open_ledger_when_available(url, stop))

        def retries() -> list[MutableMapping[str, Any]]:
            return [e for e in logs if e["event"] == "call ledger not reachable, retrying"]

        await wait_until(lambda: len(retries()) >= 3, 15, "three attempts")
        stop.set()
        assert await asyncio.wait_for(opening, 1) is None
    waits = [float(e["retry_in"].removesuffix("s")) for e in retries()]
    assert waits[0] <= 1.5
    assert waits[2] >= 2.0

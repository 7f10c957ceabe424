"""The commands as ops run them: real processes, real broker, real receiver."""

import asyncio
import json
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import pytest

from tests.support.amqp import drain, queue_depth
from tests.support.fallback import (
    AttemptLog,
    a_request,
    parked,
    publish,
    receiver_handlers,
)
from tests.support.ports import free_port
from tests.support.processes import environment, spawn, wait_for_line
from tests.support.rules_file import rule, write_rules_file
from tests.support.servers import Receiver
from tests.support.waiting import wait_until
from txmail.cli import main
from txmail.core.events import FallbackRequest, Trigger
from txmail.core.settings import Settings
from txmail.fallback.configured import FallbackRules
from txmail.fallback.executor.service import fallback_topology, running_executor
from txmail.fallback.parking import dlq
from txmail.fallback.policy.progress import PARKED_AT, PARKED_REASON, RequestProgress

RULE = rule("ops-hook")


async def txmail(settings: Settings, *args: str) -> tuple[int, str, str]:
    process = await spawn(*args, env=environment(settings))
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_dlq_list_shows_what_is_parked_and_replay_puts_it_back(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: Callable[..., FallbackRules],
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(RULE)
    receiver.webhook.default = 400
    request = a_request()
    async with running_executor(fallback_settings, rules):
        await publish(fallback_settings, request)
        await wait_until(lambda: attempt_log.outcomes() == ["parked"], what="parked")

        code, out, _ = await txmail(fallback_settings, "dlq", "list")
        assert code == 0
        assert "1 parked fallback request(s)" in out
        assert f"idempotency_key: {request.idempotency_key}" in out
        assert "external_send_id: order-1234" in out
        assert "answered 400" in out

        code, _, err = await txmail(fallback_settings, "dlq", "replay", "no-such-id")
        assert code == 1
        assert "nothing parked with id 'no-such-id'" in err

        receiver.webhook.default = 200
        code, out, _ = await txmail(fallback_settings, "dlq", "replay", "--all")
        assert code == 0
        assert "1 replayed" in out
        await wait_until(lambda: len(receiver.webhook.accepted) == 1, what="delivery")

    assert await parked(fallback_settings) == []
    assert len(receiver.webhook.accepted) == 1


async def test_the_fallback_command_runs_until_sigterm(
    fallback_settings: Settings, receiver: Receiver, tmp_path: Path, attempt_log: AttemptLog
) -> None:
    rules = write_rules_file(tmp_path / "rules.toml", RULE, handlers=receiver_handlers(receiver))
    process = await spawn(
        "fallback", env=environment(fallback_settings, rules), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        await publish(fallback_settings, a_request())
        await wait_until(lambda: len(receiver.webhook.accepted) == 1, timeout=20, what="delivery")
        await wait_until(lambda: attempt_log.outcomes() == ["succeeded"], what="recorded")
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0


async def test_the_fallback_command_refuses_an_invalid_rules_file(
    fallback_settings: Settings, tmp_path: Path
) -> None:
    rules = write_rules_file(tmp_path / "rules.toml", rule("smss", on=("bounced",)))
    process = await spawn("fallback", env=environment(fallback_settings, rules))
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert "rules[0].handlers[0]: unknown handler 'smss'" in err.decode()


async def test_the_fallback_command_refuses_a_database_url_it_cannot_use(
    fallback_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    rules = write_rules_file(tmp_path / "rules.toml", RULE, handlers=receiver_handlers(receiver))
    settings = fallback_settings.model_copy(update={"database_url": "mysql://db/txmail"})
    process = await spawn("fallback", env=environment(settings, rules))
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert "\ntxmail: TXMAIL_DATABASE_URL: 'mysql' is not supported" in f"\n{err.decode()}"


async def test_sigterm_stops_the_fallback_command_while_the_broker_is_unreachable(
    fallback_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    rules = write_rules_file(tmp_path / "rules.toml", RULE, handlers=receiver_handlers(receiver))
    nowhere = fallback_settings.model_copy(
        update={"amqp_url": f"amqp://guest:guest@127.0.0.1:{free_port()}/"}
    )
    process = await spawn(
        "fallback", env=environment(nowhere, rules), stderr=asyncio.subprocess.STDOUT
    )
    try:
        await wait_for_line(process, b"broker not reachable")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=5) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def park(
    settings: Settings,
    *requests: FallbackRequest,
    reason: str = "retries exhausted after 3 attempts; ops-hook: transient: answered 503",
    parked_at: datetime | None = None,
) -> None:
    """Put requests in the parking queue as the executor parks them."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await fallback_topology(settings).declare(channel)
        headers = {
            **RequestProgress(attempt=3).to_headers(),
            PARKED_REASON: reason,
            PARKED_AT: (parked_at or datetime.now(UTC)).isoformat(),
        }
        for request in requests:
            message = aio_pika.Message(
                request.model_dump_json().encode(),
                message_id=request.idempotency_key,
                headers=headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await channel.default_exchange.publish(
                message, fallback_topology(settings).fallback_parking_queue
            )


async def test_dlq_filters_limit_and_dry_run(fallback_settings: Settings) -> None:
    bounced = [a_request() for _ in range(3)]
    timed_out = a_request(trigger=Trigger.TIMEOUT, reason=None)
    await park(fallback_settings, *bounced, timed_out)
    await park(
        fallback_settings,
        old := a_request(),
        reason="every remaining handler failed permanently; sms: permanent: answered 400",
        parked_at=datetime.now(UTC) - timedelta(days=2),
    )

    async def listed(*options: str) -> list[str]:
        code, out, err = await txmail(fallback_settings, "dlq", "list", "--json", *options)
        assert (code, err) == (0, "")
        return [json.loads(line)["idempotency_key"] for line in out.splitlines()]

    keys = [r.idempotency_key for r in bounced]
    assert await listed() == [*keys, timed_out.idempotency_key, old.idempotency_key]
    assert await listed("--trigger", "timeout") == [timed_out.idempotency_key]
    assert await listed("--limit", "2") == keys[:2]
    assert await listed("--since", "1d") == [*keys, timed_out.idempotency_key]
    assert await listed("--since", (datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    assert await listed("--handler", "sms") == [old.idempotency_key]
    assert await listed("--handler", "ops-hook", "--trigger", "bounced", "--limit", "1") == [
        keys[0]
    ]

    code, out, _ = await txmail(fallback_settings, "dlq", "replay", "--all", "--dry-run")
    assert code == 0
    assert "5 would be replayed (dry run)" in out
    assert len(await parked(fallback_settings)) == 5

    code, out, _ = await txmail(fallback_settings, "dlq", "replay", "--all", "--handler", "sms")
    assert code == 0
    assert out.splitlines() == [
        f"replayed {old.idempotency_key} ({old.idempotency_key})",
        "1 replayed",
    ]
    assert await parked(fallback_settings) == [*keys, timed_out.idempotency_key]


async def test_dlq_refuses_options_that_make_no_sense(fallback_settings: Settings) -> None:
    for options, message in [
        (["--limit", "0"], "'0' is not a whole number above 0"),
        (["--since", "yesterday"], "is neither a duration (1h, 30m, 2d) nor an ISO time"),
        (["--trigger", "late"], "invalid choice: 'late'"),
        (["--queue", "dead-letter", "--handler", "sms"], "--handler applies to --queue parked"),
    ]:
        code, _, err = await txmail(fallback_settings, "dlq", "list", *options)
        assert code == 2, options
        assert message in err
        assert "Traceback" not in err


async def test_dlq_lists_and_replays_the_dead_letter_queue(fallback_settings: Settings) -> None:
    topology = fallback_topology(fallback_settings)
    connection = await aio_pika.connect(fallback_settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        events = await topology.declare(channel)
        body = json.dumps({"dispatch_id": "d-1", "status": "delivered"}).encode()
        message = aio_pika.Message(
            body, message_id="event-1", type="postback", headers={"received_at": "now"}
        )
        await events.publish(message, "postback.delivered")
        # What the workers do with a postback that is not the contract.
        tracker = await channel.declare_queue(topology.tracker_queue, passive=True)
        delivered = await tracker.get(timeout=5)
        await delivered.reject(requeue=False)

    async def dead_lettered() -> bool:
        return await queue_depth(fallback_settings.amqp_url, topology.dead_letter_queue) == 1

    await wait_until(dead_lettered, what="dead-lettering")

    code, out, _ = await txmail(fallback_settings, "dlq", "list", "--queue", "dead-letter")
    assert code == 0
    assert "- id: event-1  type: postback" in out
    assert f"died_in: {topology.tracker_queue}  reason: rejected" in out
    assert f"published_to: {topology.events_exchange}  routing_key: postback.delivered" in out
    assert "dispatch_id: d-1" in out
    assert "1 dead-lettered message(s)" in out

    code, out, _ = await txmail(fallback_settings, "dlq", "replay", "--queue", "dead-letter", "d-1")
    assert code == 0
    assert "replayed event-1 (postback.delivered)" in out
    [back] = await drain(fallback_settings.amqp_url, topology.tracker_queue, 1)
    assert (back.body, back.message_id, back.type, back.routing_key) == (
        body,
        "event-1",
        "postback",
        "postback.delivered",
    )
    assert back.headers["received_at"] == "now"
    assert await queue_depth(fallback_settings.amqp_url, topology.dead_letter_queue) == 0


async def test_dlq_escapes_what_could_forge_lines_and_reports_progress(
    fallback_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    forged = "\n- id: forged\x1b[2K"
    await park(fallback_settings, a_request(external_send_id="order\n1"), reason=forged)
    monkeypatch.setenv("TXMAIL_AMQP_URL", fallback_settings.amqp_url)
    monkeypatch.setenv("TXMAIL_NAMESPACE", fallback_settings.namespace)
    monkeypatch.setattr(dlq, "PROGRESS_INTERVAL", 0.0)
    # In a thread: the command runs its own event loop.
    assert await asyncio.to_thread(main, ["dlq", "list"]) == 0
    out, err = capsys.readouterr()
    assert "external_send_id: order\\n1" in out
    assert "reason: \\n- id: forged\\x1b[2K" in out
    assert "\x1b" not in out
    assert "txmail: read 1 of 1 parked, 1 selected" in err


async def test_dlq_leaves_a_dead_letter_it_cannot_place(fallback_settings: Settings) -> None:
    topology = fallback_topology(fallback_settings)
    connection = await aio_pika.connect(fallback_settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare(channel)
        # Published straight to the dead-letter exchange: no x-death header.
        dead = await channel.get_exchange(topology.dead_letter_exchange)
        await dead.publish(aio_pika.Message(b"{}", message_id="stray"), "")

    code, out, err = await txmail(
        fallback_settings, "dlq", "replay", "--queue", "dead-letter", "--all"
    )
    assert code == 1
    assert "txmail: stray: not replayed: no x-death header says where it was published" in err
    assert "0 replayed" in out
    assert await queue_depth(fallback_settings.amqp_url, topology.dead_letter_queue) == 1


async def test_dlq_list_into_a_reader_that_goes_away_loses_nothing(
    fallback_settings: Settings,
) -> None:
    # More than a pipe holds, so the listing is still writing when the reader leaves.
    await park(fallback_settings, *(a_request() for _ in range(600)))
    read_end, write_end = os.pipe()
    process = await spawn("dlq", "list", env=environment(fallback_settings), stdout=write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:  # as `| head -1` would: read a little, leave
        assert (await asyncio.to_thread(reader.readline)).startswith(b"- id: ")
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 1
    assert b"Traceback" not in err
    assert len(await parked(fallback_settings)) == 600

"""The commands as ops run them: real processes, real broker, real receiver."""

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from fallback.executor import running_executor
from fallback.rules_file import RulesFile
from tests.fallback.conftest import RETRY_SCHEDULE, AttemptLog
from tests.fallback.requests import a_request, handlers_toml, parked, publish
from tests.fallback.servers import Receiver
from tests.ports import free_port
from tests.processes import wait_for_line
from tests.waiting import wait_until
from txmail.durations import format_duration
from txmail.settings import Settings

RULE = '[[rules]]\non = ["*"]\nhandlers = ["ops-hook"]\n'


def environment(settings: Settings, rules: Path | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "TXMAIL_AMQP_URL": settings.amqp_url,
        "TXMAIL_NAMESPACE": settings.namespace,
        "TXMAIL_DATABASE_URL": settings.database_url,
        "TXMAIL_FALLBACK_RETRY_SCHEDULE": ",".join(map(format_duration, RETRY_SCHEDULE)),
    }
    if rules is not None:
        env["TXMAIL_RULES"] = str(rules)
    return env


async def txmail(settings: Settings, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "txmail.cli",
        *args,
        env=environment(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_dlq_list_shows_what_is_parked_and_replay_puts_it_back(
    fallback_settings: Settings,
    receiver: Receiver,
    write_rules: Callable[[str], RulesFile],
    attempt_log: AttemptLog,
) -> None:
    rules = write_rules(handlers_toml(receiver) + RULE)
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
    rules = tmp_path / "rules.toml"
    rules.write_text(handlers_toml(receiver) + RULE)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "txmail.cli",
        "fallback",
        env=environment(fallback_settings, rules),
        stdout=asyncio.subprocess.DEVNULL,
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
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\non = ["bounced"]\nhandlers = ["smss"]\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "txmail.cli",
        "fallback",
        env=environment(fallback_settings, rules),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert "rules[0].handlers[0]: unknown handler 'smss'" in err.decode()


async def test_the_fallback_command_refuses_a_database_url_it_cannot_use(
    fallback_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(handlers_toml(receiver) + RULE)
    settings = fallback_settings.model_copy(update={"database_url": "mysql://db/txmail"})
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "txmail.cli", "fallback"),
        env=environment(settings, rules),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert err.decode().startswith("txmail: TXMAIL_DATABASE_URL: 'mysql' is not supported")


async def test_sigterm_stops_the_fallback_command_while_the_broker_is_unreachable(
    fallback_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(handlers_toml(receiver) + RULE)
    nowhere = fallback_settings.model_copy(
        update={"amqp_url": f"amqp://guest:guest@127.0.0.1:{free_port()}/"}
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "txmail.cli", "fallback",
        env=environment(nowhere, rules),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_for_line(process, b"broker not reachable")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=5) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

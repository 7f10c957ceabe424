"""The executor's broker connections drop: it consumes and publishes again by itself,
says it is not ready meanwhile, and runs the fallback that came in the meantime once."""

from pathlib import Path

from tests.support.fallback import AttemptLog, a_request, publish, receiver_handlers
from tests.support.readiness import is_not_consuming, is_ready, proxied
from tests.support.rules_file import rule, write_rules_file
from tests.support.servers import Receiver
from tests.support.waiting import wait_until
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.fallback.configured import configure
from txmail.fallback.executor.service import running_executor


async def test_the_executor_consumes_again_and_runs_the_fallback_once(
    fallback_settings: Settings, receiver: Receiver, attempt_log: AttemptLog, tmp_path: Path
) -> None:
    handlers = receiver_handlers(receiver)
    hook = rule("ops-hook", on=("bounced",))
    rules = configure(
        read_rules_file(write_rules_file(tmp_path / "rules.toml", hook, handlers=handlers))
    )
    async with proxied(fallback_settings) as (proxy, cut_off):
        async with running_executor(cut_off, rules) as executor:
            assert executor is not None
            await wait_until(lambda: is_ready(executor), what="the executor to be ready")
            await proxy.cut()
            await wait_until(
                lambda: is_not_consuming(executor), what="the executor to say it is not ready"
            )
            request = a_request()
            await publish(fallback_settings, request)
            await proxy.start()
            await wait_until(lambda: is_ready(executor), timeout=20, what="the executor back")
            await wait_until(lambda: len(receiver.webhook.accepted) == 1, what="the fallback")
            # Its outcome goes out on the publishing connection, which dropped too.
            await wait_until(
                lambda: attempt_log.outcomes("ops-hook") == ["succeeded"], what="the outcome"
            )
        assert receiver.webhook.keys == {f"{request.idempotency_key}:ops-hook"}
        assert len(receiver.webhook.calls) == 1

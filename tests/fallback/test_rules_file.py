"""The rules file: the issue's example loads; every mistake is named with its place."""

import asyncio
import os
import signal
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import spawn, wait_for_line
from tests.support.servers import WEBHOOK_SECRET
from txmail.cli import main
from txmail.core.errors import ConfigError
from txmail.core.events import (
    DEADLINE_TRIGGERS,
    MESSAGE_TRIGGERS,
    BrazeHealth,
    FallbackRequest,
    Recipient,
    Trigger,
)
from txmail.core.rules_file import Mode, read_rules_file
from txmail.core.settings import Settings
from txmail.fallback.configured import FallbackRules, check_file, configure
from txmail.fallback.handler import PermanentFailure
from txmail.fallback.handlers.webhook import WebhookConfig
from txmail.fallback.rules import matches
from txmail.fallback.templates import TextTemplate, template_context

EXAMPLE = f"""
[tracking]
delivery_timeout = "10m"
[tracking.campaigns."417220e4-5a2a-b634-7f7d-9ec891532368"]
delivery_timeout = "2m"

[handlers.ops-hook]
type = "webhook"
url = "https://ops.example.com/email-fallback"
secret = "{WEBHOOK_SECRET}"

[handlers.sms]
type = "sms"
account_sid = "AC123"
auth_token_env = "TEST_SMS_TOKEN"
from = "+15550000000"
body = "Your order $external_send_id: we could not email you."

[handlers.mailer]
type = "smtp"
host = "relay.internal"
from = "noreply@shop.example"
subject = "About your order $external_send_id"
body = "Hello,\\n$reason"

[handlers.bus]
type = "amqp"
exchange = "ops"

[handlers.dry-run]
type = "log"

[[rules]]
on = ["bounced", "aborted", "timeout"]
campaigns = ["*"]
reason = "^5\\\\d\\\\d"
handlers = ["sms", "ops-hook"]
mode = "first_success"

[[rules]]
on = ["*"]
handlers = ["mailer", "bus", "dry-run"]
mode = "all"
"""


@pytest.fixture
def sms_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMS_TOKEN", "from-the-environment")


def load(path: Path) -> FallbackRules:
    """The file as the executor takes it: its schema, then its handler tables."""
    return configure(read_rules_file(path))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.usefixtures("sms_token_env")
def test_the_issue_example_loads(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    tracking = read_rules_file(path).tracking
    assert tracking.fixed() == timedelta(minutes=10)
    campaign = tracking.campaigns["417220e4-5a2a-b634-7f7d-9ec891532368"]
    assert campaign.fixed() == timedelta(minutes=2)
    rules_file = load(path)
    assert sorted(rules_file.handlers) == ["bus", "dry-run", "mailer", "ops-hook", "sms"]
    assert rules_file.handlers["sms"].config.model_dump()["auth_token"].get_secret_value() == (
        "from-the-environment"
    )
    assert isinstance(rules_file.handlers["ops-hook"].config, WebhookConfig)
    assert [rule.mode for rule in rules_file.rules] == [Mode.FIRST_SUCCESS, Mode.ALL]


HOOK = f"""
[handlers.hook]
type = "webhook"
url = "https://ops.example.com/x"
secret = "{WEBHOOK_SECRET}"
"""

RULE = '[[rules]]\non = ["bounced"]\nhandlers = ["hook"]\n'

INVALID = [
    ("[tracking\n", "not valid TOML"),
    (
        '[tracking]\ndelivery_timeout = "auto"\nmin_delivery_timeout = "2h"\n',
        "tracking: min_delivery_timeout must not be longer than max_delivery_timeout",
    ),
    (
        '[tracking]\ndelivery_timeout = "10m"\nmax_delivery_timeout = "2h"\n',
        'tracking: min/max_delivery_timeout go with delivery_timeout = "auto"',
    ),
    ('[health]\nrecovered_p95 = "2m"\n', "health: recovered_p95 must be lower than degraded_p95"),
    ("[health]\nwindow = 300\n", 'health.window: write a duration with its unit, e.g. "300s"'),
    ("[health]\nmin_sends = 0\n", "health.min_sends: Input should be greater than or equal to 1"),
    ('[tracking]\ndelivery_timeout = "10 minutes"\n', "tracking.delivery_timeout: '10 minutes'"),
    ('[tracking]\ndelivery_timeout = "0s"\n', "tracking.delivery_timeout: must be longer than 0s"),
    ('[handlers.x]\ntype = "log"\ntimeout = "0s"\n', "handlers.x.timeout: must be longer than 0s"),
    (
        "[tracking]\ndelivery_timeout = 10\n",
        'tracking.delivery_timeout: write a duration with its unit, e.g. "10s" or "10m"',
    ),
    (
        '[tracking.campaigns."c1"]\ndelivery_timeout = 2.5\n',
        "tracking.campaigns.c1.delivery_timeout: write a duration with its unit",
    ),
    ('[handlers.x]\ntype = "log"\ntimeout = 5\n', "handlers.x.timeout: write a duration with"),
    ('[tracking.campaigns."c 1"]\n', 'tracking.campaigns."c 1".delivery_timeout: missing'),
    ("[trackin]\n", "trackin: unknown key"),
    ("[[rule]]\n", "rule: unknown key"),
    ('handlers = "sms"\n', "handlers: Input should be a valid dictionary"),
    ('[handlers.x]\nurl = "https://a"\n', "handlers.x.type: missing"),
    ('[handlers.x]\ntype = "smss"\n', "handlers.x.type: unknown handler type 'smss' (known: amqp"),
    ('[handlers."a b"]\ntype = "log"\n', 'handlers."a b": a handler name uses letters'),
    ('[handlers.x]\ntype = "log"\nlevel = "info"\n', "handlers.x.level: unknown key"),
    ('[handlers.x]\ntype = "log"\ntimeout = "soon"\n', "handlers.x.timeout: 'soon' is not a"),
    ('[handlers.x]\ntype = "webhook"\nsecret = "whsec_AAAA"\n', "handlers.x.url: missing"),
    (
        '[handlers.x]\ntype = "webhook"\nurl = "ftp://a"\nsecret = "whsec_x"\n',
        "handlers.x.url: URL scheme should be 'http' or 'https'",
    ),
    (
        '[handlers.x]\ntype = "webhook"\nurl = "https://a"\nsecret = "s3cret"\n',
        "handlers.x.secret: the secret must start with 'whsec_'",
    ),
    (
        '[handlers.x]\ntype = "webhook"\nurl = "https://a"\nsecret = "whsec_!!"\n',
        "handlers.x.secret: the secret after 'whsec_' must be base64",
    ),
    (
        '[handlers.x]\ntype = "webhook"\nurl = "https://a"\nsecret_env = "TXMAIL_TEST_UNSET"\n',
        "handlers.x.secret_env: environment variable 'TXMAIL_TEST_UNSET' is not set",
    ),
    (
        f'[handlers.x]\ntype = "webhook"\nurl = "https://a"\nsecret = "{WEBHOOK_SECRET}"\n'
        'secret_env = "HOME"\n',
        "handlers.x.secret_env: set either 'secret' or 'secret_env', not both",
    ),
    (
        '[handlers.x]\ntype = "sms"\naccount_sid = "AC1"\nauth_token = "t"\nfrom = "+1"\n',
        "handlers.x.body: missing",
    ),
    (
        '[handlers.x]\ntype = "sms"\naccount_sid = "AC1"\nauth_token = "t"\nfrom = "+1"\n'
        'body = "50% off ${first_name"\n',
        "handlers.x.body: invalid template '50% off ${first_name'",
    ),
    (
        '[handlers.x]\ntype = "sms"\naccount_sid = "AC1"\nauth_token = "t"\nfrom = "+1"\n'
        "body = 42\n",
        "handlers.x.body: a template must be a string",
    ),
    (
        '[handlers.x]\ntype = "smtp"\nhost = "h"\nfrom = "a@b"\nsubject = "s"\nbody = "b"\n'
        'username = "u"\n',
        "handlers.x: set both 'username' and 'password'",
    ),
    (
        '[handlers.x]\ntype = "smtp"\nhost = "h"\nport = 70000\nfrom = "a@b"\nsubject = "s"\n'
        'body = "b"\n',
        "handlers.x.port: Input should be less than or equal to 65535",
    ),
    ('[handlers.x]\ntype = "amqp"\n', "handlers.x.exchange: missing"),
    (HOOK + '[[rules]]\nhandlers = ["hook"]\n', "rules[0].on: missing"),
    (HOOK + '[[rules]]\non = []\nhandlers = ["hook"]\n', "rules[0].on: List should have at least"),
    (HOOK + '[[rules]]\non = "*"\nhandlers = ["hook"]\n', 'rules[0].on: write a list: on = ["*"]'),
    (
        HOOK + '[[rules]]\non = ["*"]\nhandlers = "hook"\n',
        'rules[0].handlers: write a list: handlers = ["hook"]',
    ),
    (
        HOOK + '[[rules]]\non = ["bouncd"]\nhandlers = ["hook"]\n',
        "rules[0].on[0]: unknown trigger 'bouncd' "
        "(use aborted, bounced, timeout, not_sent, braze_degraded, braze_recovered, or '*')",
    ),
    (
        HOOK + '[[rules]]\non = ["bounced"]\ncampaigns = [""]\nhandlers = ["hook"]\n',
        "rules[0].campaigns: a campaign id cannot be empty",
    ),
    (
        HOOK + '[[rules]]\non = ["bounced"]\nreason = "^5\\\\d(\\\\d"\nhandlers = ["hook"]\n',
        "rules[0].reason: invalid regular expression",
    ),
    (HOOK + '[[rules]]\non = ["bounced"]\n', "rules[0].handlers: missing"),
    (HOOK + '[[rules]]\non = ["bounced"]\nhandlers = []\n', "rules[0].handlers: List should"),
    (
        HOOK + RULE + '[[rules]]\non = ["bounced"]\nhandlers = ["hook", "smss"]\n',
        "rules[1].handlers[1]: unknown handler 'smss' (define it as [handlers.smss]; "
        "defined: hook)",
    ),
    (
        HOOK + '[[rules]]\non = ["bounced"]\nhandlers = ["hook", "hook"]\n',
        "rules[0].handlers: each handler at most once per rule: hook",
    ),
    (
        HOOK + '[[rules]]\non = ["bounced"]\nhandlers = ["hook"]\nmode = "any"\n',
        "rules[0].mode: Input should be 'first_success' or 'all'",
    ),
    (HOOK + '[[rules]]\non = ["bounced"]\nhandlers = ["hook"]\nwhen = 1\n', "rules[0].when:"),
    (
        HOOK + '[[rules]]\non = ["timeout"]\nwhen_braze = "slow"\nhandlers = ["hook"]\n',
        "rules[0].when_braze: Input should be 'degraded' or 'healthy'",
    ),
    (
        HOOK
        + '[[rules]]\non = ["timeout", "bounced"]\nwhen_braze = "degraded"\nhandlers = ["hook"]\n',
        "rules[0].when_braze: Braze's health is known only for timeout and not_sent requests: "
        'on = ["timeout"] (or "not_sent", or both), not \'bounced\'',
    ),
    (
        HOOK + '[[rules]]\non = ["*"]\nwhen_braze = "healthy"\nhandlers = ["hook"]\n',
        "rules[0].when_braze: Braze's health is known only for timeout and not_sent requests",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_each_mistake_is_named_with_its_place(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, text))
    assert message in str(raised.value)
    assert str(raised.value).startswith(f"invalid rules file {tmp_path / 'rules.toml'}:")


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = '[handlers.x]\ntype = "sms"\n[[rules]]\non = ["x"]\nhandlers = ["y"]\n'
    _, problems = check_file(write(tmp_path, text))
    assert len(problems) == 4 + 1 + 1  # x's missing fields, a trigger, a handler
    assert [p for p in problems if p.startswith("rules[0].handlers[0]: unknown handler 'y'")]


def test_every_problem_of_a_handler_is_listed_with_an_unset_secret(tmp_path: Path) -> None:
    text = (
        '[handlers.x]\ntype = "webhook"\nurl = "ftp://a"\ntimeout = 5\n'
        'secret_env = "TXMAIL_TEST_UNSET"\n'
        '[handlers.m]\ntype = "smtp"\nhost = "h"\nfrom = "a@b"\nsubject = "s"\nbody = "b"\n'
        'username = "u"\npassword_env = "TXMAIL_TEST_UNSET"\n'
    )
    _, problems = check_file(write(tmp_path, text))
    assert problems == [
        "handlers.x.secret_env: environment variable 'TXMAIL_TEST_UNSET' is not set "
        "(the executor needs it)",
        'handlers.x.timeout: write a duration with its unit, e.g. "5s" or "5m"',
        "handlers.x.url: URL scheme should be 'http' or 'https'",
        "handlers.m.password_env: environment variable 'TXMAIL_TEST_UNSET' is not set "
        "(the executor needs it)",
    ]


def test_no_message_keeps_pydantics_value_error_prefix(tmp_path: Path) -> None:
    for text, _ in INVALID:
        _, problems = check_file(write(tmp_path, text))
        assert not [p for p in problems if "Value error" in p], text


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it: No such file or directory"):
        load(tmp_path / "nope.toml")


def test_check_config_prints_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, HOOK + '[[rules]]\non = ["bouncd"]\nhandlers = ["smss"]\n')
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "rules[0].on[0]: unknown trigger 'bouncd'" in err
    assert "rules[0].handlers[0]: unknown handler 'smss'" in err


def test_check_config_passes_a_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXMAIL_RULES", str(write(tmp_path, HOOK + RULE)))
    assert main(["check-config"]) == 0
    assert "ok (1 handlers, 1 rules)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("", "warning: no [[rules]]: every fallback request is recorded as 'no rule'"),
        (HOOK + '[handlers.spare]\ntype = "log"\n' + RULE, "warning: handlers.spare: no rule uses"),
    ],
)
def test_check_config_warns_of_a_file_that_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, warning: str
) -> None:
    assert main(["check-config", str(write(tmp_path, text))]) == 0
    assert warning in capsys.readouterr().err


def test_check_config_warns_of_a_retry_schedule_shorter_than_a_handlers_lease(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(write(tmp_path, HOOK + RULE))
    monkeypatch.setenv("TXMAIL_FALLBACK_RETRY_SCHEDULE", "2s,3s")
    assert main(["check-config", path]) == 0
    assert "outlasts TXMAIL_FALLBACK_RETRY_SCHEDULE (5s in all)" in capsys.readouterr().err
    monkeypatch.delenv("TXMAIL_FALLBACK_RETRY_SCHEDULE")
    assert main(["check-config", path]) == 0
    assert "outlasts" not in capsys.readouterr().err


def test_the_documented_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("OPS_HOOK_SECRET", "TWILIO_AUTH_TOKEN", "RELAY_PASSWORD"):
        monkeypatch.setenv(variable, WEBHOOK_SECRET)
    example = Path(__file__).parents[2] / "fallback" / "rules.example.toml"
    rules_file = load(example)
    assert len(rules_file.rules) == 5


def test_the_documented_example_can_serve_every_trigger_its_rules_take(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rule of the example must not pick a handler whose templates need a name that
    requests of that trigger never have (``$reason`` of a timeout): it would park them
    all. The request is the fullest the workers make: a registered send with both
    addresses and the variable the example uses, a reason only for a failure."""
    for variable in ("OPS_HOOK_SECRET", "TWILIO_AUTH_TOKEN", "RELAY_PASSWORD"):
        monkeypatch.setenv(variable, WEBHOOK_SECRET)
    example = load(Path(__file__).parents[2] / "fallback" / "rules.example.toml")
    for index, rule in enumerate(example.rules):
        triggers = MESSAGE_TRIGGERS if "*" in rule.on else {Trigger(t) for t in rule.on}
        stamps: dict[Trigger, tuple[BrazeHealth | None, ...]] = {
            trigger: ("degraded", "healthy") if trigger in DEADLINE_TRIGGERS else (None,)
            for trigger in triggers
        }
        for trigger, braze_health in ((t, h) for t in triggers for h in stamps[t]):
            failed = trigger in (Trigger.ABORTED, Trigger.BOUNCED)
            request = FallbackRequest(
                idempotency_key="txm_1",
                trigger=trigger,
                dispatch_id="d",
                external_send_id="order-1",
                campaign_api_id=rule.campaigns[0] if "*" not in rule.campaigns else "c",
                reason="550 5.1.1 no such user" if failed else None,
                recipient=Recipient(email="jane@example.com", phone="+15550001111"),
                variables={"first_name": "Jane"},
                decided_at=datetime(2026, 11, 27, tzinfo=UTC),
                braze_health=braze_health,
            )
            if not matches(rule, request):
                continue
            context = template_context(request)
            for name in rule.handlers:
                config = example.handlers[name].config
                for field in type(config).model_fields:
                    template = getattr(config, field)
                    if isinstance(template, TextTemplate):
                        where = f"rules[{index}] ({trigger}) handlers.{name}.{field}"
                        try:
                            template.render(context, field)
                        except PermanentFailure as failure:
                            pytest.fail(f"{where}: {failure}")


@pytest.mark.parametrize("command", ["ingress", "worker", "api", "status", "migrate", "dlq"])
def test_every_command_refuses_a_file_that_breaks_the_schema(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    """Every process reads the one schema (txmail.core.rules_file) at start, before
    anything else: a rule naming no handler stops the ingress as it stops the executor."""
    bad = write(tmp_path, '[[rules]]\non = ["bounced"]\nhandlers = ["smss"]\n')
    monkeypatch.setenv("TXMAIL_RULES", str(bad))
    arguments = {"status": ["status", "x"], "dlq": ["dlq", "list"]}.get(command, [command])
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert "rules[0].handlers[0]: unknown handler 'smss'" in err
    assert str(bad) in err


EXAMPLE_FILE = Path(__file__).parents[2] / "fallback" / "rules.example.toml"
EXAMPLE_SECRETS = ("OPS_HOOK_SECRET", "TWILIO_AUTH_TOKEN", "RELAY_PASSWORD")


def test_the_executor_refuses_to_start_without_a_handler_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TXMAIL_RULES", str(EXAMPLE_FILE))
    for variable in EXAMPLE_SECRETS:
        monkeypatch.delenv(variable, raising=False)
    assert main(["fallback"]) == 2
    assert "environment variable 'OPS_HOOK_SECRET' is not set" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ingress", "worker", "api"])
def test_the_other_processes_refuse_a_rules_file_that_is_not_toml(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    monkeypatch.setenv("TXMAIL_RULES", str(write(tmp_path, "[tracking\n")))
    assert main([command]) == 2
    assert "not valid TOML" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["worker", "api"])
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[tracking]\ndelivery_timeout = 10\n",
            'tracking.delivery_timeout: write a duration with its unit, e.g. "10s" or "10m"',
        ),
        ("[trackin]\n", "trackin: unknown key"),
    ],
)
def test_the_workers_check_the_tracking_they_read_as_check_config_does(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    text: str,
    message: str,
) -> None:
    # The handler is not theirs to check: its unset secret does not stop them.
    handler = (
        '[handlers.x]\ntype = "webhook"\nurl = "https://a"\nsecret_env = "TXMAIL_TEST_UNSET"\n'
    )
    monkeypatch.setenv("TXMAIL_RULES", str(write(tmp_path, f"{text}{handler}\n")))
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "TXMAIL_TEST_UNSET" not in err


async def test_the_ingress_starts_without_the_handlers_secrets(settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if k not in EXAMPLE_SECRETS}
    process = await spawn(
        "ingress",
        env={
            **env,
            "TXMAIL_AMQP_URL": settings.amqp_url,
            "TXMAIL_NAMESPACE": settings.namespace,
            "TXMAIL_HTTP_HOST": "127.0.0.1",
            "TXMAIL_HTTP_PORT": str(free_port()),
            "TXMAIL_RULES": str(EXAMPLE_FILE),
        },
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        # Once connected: a SIGTERM while the broker connects is a matter of its own.
        await wait_for_line(process, b"broker connected")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_a_bad_setting_is_said_without_pydantics_prefix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TXMAIL_NAMESPACE", "a b")
    assert main(["check-config"]) == 2
    assert "TXMAIL_NAMESPACE: use letters, digits" in capsys.readouterr().err

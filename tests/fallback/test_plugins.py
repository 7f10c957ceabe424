"""Third-party handler types, found through the ``txmail.fallback_handlers`` entry points
of an installed distribution (a real one on sys.path, made by the test)."""

import importlib
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from txmail.core.errors import ConfigError
from txmail.core.events import FallbackRequest, Trigger
from txmail.core.rules_file import read_rules_file
from txmail.fallback.configured import configure
from txmail.fallback.executor.service import build_handlers
from txmail.fallback.handler import FallbackHandler, HandlerResources

PLUGIN = """
from txmail.fallback.handler import HandlerConfig, HandlerResources, PermanentFailure
from txmail.core.events import FallbackRequest

SENT = []


class PagerConfig(HandlerConfig):
    secret_fields = ("token",)
    service: str
    token: str = ""


class PagerHandler:
    config_model = PagerConfig

    def __init__(self, name: str, config: PagerConfig, resources: HandlerResources) -> None:
        self.config = config

    async def send(self, request: FallbackRequest, idempotency_key: str) -> None:
        if request.external_send_id is None:
            raise PermanentFailure("nothing to page about")
        SENT.append((self.config.service, idempotency_key))


class NotAHandler:
    pass


class SyncPagerHandler(PagerHandler):
    def send(self, request: FallbackRequest, idempotency_key: str) -> None:  # not async
        SENT.append((self.config.service, idempotency_key))
"""


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "txmail_pager.py").write_text(PLUGIN)
    dist_info = tmp_path / "txmail_pager-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: txmail-pager\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [txmail.fallback_handlers]
            pager = txmail_pager:PagerHandler
            broken = txmail_pager:NotAHandler
            sync = txmail_pager:SyncPagerHandler
            missing = txmail_pager_gone:Handler
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_handler_type_from_an_entry_point_is_used(
    installed_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGER_TOKEN", "t0ken")
    rules = installed_plugin / "rules.toml"
    rules.write_text(
        '[handlers.page-ops]\ntype = "pager"\nservice = "email"\ntoken_env = "PAGER_TOKEN"\n'
    )
    configured = configure(read_rules_file(rules)).handlers["page-ops"]
    assert configured.type_name == "pager"
    assert configured.config.model_dump() == {
        "timeout": "10s",
        "service": "email",
        "token": "t0ken",
    }


def test_its_config_is_checked_like_a_built_in(installed_plugin: Path) -> None:
    rules = installed_plugin / "rules.toml"
    rules.write_text('[handlers.page-ops]\ntype = "pager"\nservise = "email"\n')
    with pytest.raises(ConfigError) as raised:
        configure(read_rules_file(rules))
    assert "handlers.page-ops.service: missing" in str(raised.value)
    assert "handlers.page-ops.servise: unknown key" in str(raised.value)


@pytest.mark.parametrize(
    ("type_name", "message"),
    [
        ("broken", "handler type 'broken' (txmail_pager:NotAHandler) is not a handler class"),
        ("missing", "handler type 'missing' (txmail_pager_gone:Handler) failed to load"),
        ("pagr", "unknown handler type 'pagr' (known: amqp, broken, log, missing, pager, sms"),
    ],
)
def test_a_plugin_that_is_not_usable_is_a_config_error(
    installed_plugin: Path, type_name: str, message: str
) -> None:
    rules = installed_plugin / "rules.toml"
    rules.write_text(f'[handlers.x]\ntype = "{type_name}"\n')
    with pytest.raises(ConfigError, match=r"handlers\.x\.type: ") as raised:
        configure(read_rules_file(rules))
    assert message in str(raised.value)


async def test_the_plugin_handler_runs(installed_plugin: Path, resources: HandlerResources) -> None:
    rules = installed_plugin / "rules.toml"
    rules.write_text('[handlers.page-ops]\ntype = "pager"\nservice = "email"\n')
    configured = configure(read_rules_file(rules)).handlers["page-ops"]
    handler = configured.handler_type("page-ops", configured.config, resources)
    assert isinstance(handler, FallbackHandler)
    request = FallbackRequest(
        idempotency_key="k",
        trigger=Trigger.TIMEOUT,
        dispatch_id=None,
        external_send_id="order-1",
        campaign_api_id=None,
        decided_at=datetime.now(UTC),
    )
    await handler.send(request, "k:page-ops")
    assert importlib.import_module("txmail_pager").SENT == [("email", "k:page-ops")]


def test_a_plugin_whose_send_is_not_async_is_refused_at_start(
    installed_plugin: Path, resources: HandlerResources
) -> None:
    # Awaiting its send would fail after the send already ran: every request would be
    # sent, counted as failed, and sent again.
    rules = installed_plugin / "rules.toml"
    rules.write_text('[handlers.page-ops]\ntype = "sync"\nservice = "email"\n')
    with pytest.raises(ConfigError, match=r"handlers\.page-ops: type 'sync' built"):
        build_handlers(configure(read_rules_file(rules)), resources)

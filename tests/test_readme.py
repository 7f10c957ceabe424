"""The README's promises stay true: the test command is the one CI runs, settings are listed."""

import json
import re
from pathlib import Path

from tests.support.braze import BRAZE_EXAMPLES
from tests.support.ingress_server import running_ingress
from txmail.cli import build_parser
from txmail.core.metrics import exposed
from txmail.core.settings import Settings
from txmail.fallback import metrics as fallback_metrics
from txmail.fallback.configured import resolve_secrets
from txmail.fallback.handler import HandlerConfig
from txmail.ingress import metrics as ingress_metrics
from txmail.workers import metrics as worker_metrics

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r'^TEST_COMMAND="(.+)"$', ci, re.MULTILINE)
    assert command is not None
    assert f"\n{command.group(1)}\n" in README
    assert 'eval "$TEST_COMMAND"' in ci


def test_every_setting_is_documented() -> None:
    for field in Settings.model_fields:
        assert f"`TXMAIL_{field.upper()}`" in README, field


def test_every_metric_is_documented() -> None:
    layers = (ingress_metrics, worker_metrics, fallback_metrics)
    for registry in exposed(*(layer.REGISTRY for layer in layers)):
        for family in registry.collect():
            if family.name.startswith("txmail_"):
                name = f"{family.name}_total" if family.type == "counter" else family.name
                assert f"\n| `{name}` | {family.type} |" in README, name


def test_every_subcommand_is_documented() -> None:
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    assert commands.choices is not None
    for name in commands.choices:
        assert f"`txmail {name}" in README, name


DEPLOY = ROOT / "deploy"
SAMPLE = json.loads((DEPLOY / "sample-postbacks.json").read_text())
SAMPLE_SEND = json.loads((DEPLOY / "sample-send.json").read_text())


def first_lines() -> str:
    """The README before its first section: what a newcomer follows."""
    return README.split("\n## ", 1)[0]


def test_the_first_lines_run_it_try_it_and_test_it() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r'^TEST_COMMAND="(.+)"$', ci, re.MULTILINE)
    assert command is not None
    text = first_lines()
    assert "\ndocker compose up --build -d\n" in text
    assert re.search(r"^python3 -m venv .* txmail run$", text, re.MULTILINE)
    assert f"\n{command.group(1)}\n" in text


def test_the_sample_is_brazes_five_examples_as_they_are() -> None:
    assert BRAZE_EXAMPLES == SAMPLE


def test_the_sample_send_and_the_registration_example_are_for_the_samples_send() -> None:
    [send_id] = {p["metadata"]["external_send_id"] for p in SAMPLE}
    assert SAMPLE_SEND["external_send_id"] == send_id
    example = re.search(r"### `POST /v1/sends`.*?```json\n(.*?)```", README, re.DOTALL)
    assert example is not None
    assert json.loads(example.group(1)) == SAMPLE_SEND


def test_the_quick_start_posts_the_samples_and_asks_about_their_send() -> None:
    quick_start = first_lines()
    [send_id] = {p["metadata"]["external_send_id"] for p in SAMPLE}
    assert "-d @deploy/sample-send.json" in quick_start
    assert "-d @deploy/sample-postbacks.json" in quick_start
    assert f"\ntxmail status {send_id}" in quick_start
    assert f"docker compose exec api txmail status {send_id[:4]}" in quick_start
    # zsh takes an unquoted `?` for a glob.
    for line in re.findall(r"^curl .*$", quick_start, re.MULTILINE):
        assert not re.search(r"\s[^'\s]*\?", line), line


async def test_the_samples_are_accepted_as_they_are(settings: Settings) -> None:
    async with running_ingress(settings) as client:
        sent = await client.post("/v1/sends", json=SAMPLE_SEND)
        assert sent.status == 202, await sent.text()
        posted = await client.post(
            "/postbacks", data=(DEPLOY / "sample-postbacks.json").read_bytes()
        )
        assert posted.status == 202, await posted.text()
        assert (await posted.json())["accepted"] == 5


def test_the_plugin_example_runs_as_written() -> None:
    """The handler type under "Writing a handler type", executed as a module: its
    imports are the public plug-in API, and its config is one the executor takes."""
    section = README.split("### Writing a handler type", 1)[1]
    code = re.search(r"```python\n(.+?)```", section, re.DOTALL)
    assert code is not None
    module: dict[str, object] = {}
    exec(compile(code.group(1), "README.md (mypackage/pager.py)", "exec"), module)  # noqa: S102
    config_model = module["PagerConfig"]
    assert isinstance(config_model, type)
    assert issubclass(config_model, HandlerConfig)
    assert vars(module["PagerHandler"])["config_model"] is config_model
    table = {"url": "https://pager.example.com/", "api_key_env": "PAGER_KEY"}
    secrets = resolve_secrets(config_model, table, {"PAGER_KEY": "k"})
    assert secrets.problems == []
    assert config_model.model_validate(secrets.table).timeout.total_seconds() == 10

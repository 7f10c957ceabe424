"""The README's promises stay true: the test command is the one CI runs, settings are listed."""

import re
from pathlib import Path

from txmail.cli import build_parser
from txmail.settings import Settings

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


def test_every_subcommand_is_documented() -> None:
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    assert commands.choices is not None
    for name in commands.choices:
        assert f"`txmail {name}" in README, name

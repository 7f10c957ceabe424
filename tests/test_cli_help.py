"""Each command's --help says what it reads, how it ends, and (ingress) what it serves."""

import argparse
import re
from importlib.metadata import version

import pytest

from txmail.cli import build_parser, main
from txmail.cli.command_help import EXIT_CODES, READS, commands
from txmail.core.settings import Settings
from txmail.ingress.app import create_app

# `run` and `check-config` read every setting: they prove nothing about the others.
EVERY_SETTING = {"run", "check-config"}


def leaf_commands() -> dict[str, argparse.ArgumentParser]:
    return {
        name: command
        for name, command in commands(build_parser())
        if not any(isinstance(a, argparse._SubParsersAction) for a in command._actions)
    }


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"txmail {version('txmail')}\n"


def test_every_command_lists_its_variables_and_exit_codes() -> None:
    for name, command in leaf_commands().items():
        assert name in READS, f"txmail {name}: add it to src/txmail/cli/command_help.py"
        text = command.format_help()
        for field in READS[name]:
            assert f"TXMAIL_{field.upper()} " in text, (name, field)
        for code in EXIT_CODES[name]:
            assert f"\n  {code}  " in text, (name, code)


def test_the_lists_name_real_settings_and_miss_none() -> None:
    fields = set(Settings.model_fields)
    for name, read in READS.items():
        assert set(read) <= fields, name
    read_somewhere = {f for name, read in READS.items() if name not in EVERY_SETTING for f in read}
    assert fields - read_somewhere == set()


def test_a_variables_default_comes_from_its_field() -> None:
    text = leaf_commands()["fallback"].format_help()
    assert re.search(r"\n  TXMAIL_FALLBACK_RETRY_SCHEDULE +default: 10s,1m,5m,30m,2h\n", text)
    assert re.search(r"\n  TXMAIL_RULES +default: unset\n", text)


def test_ingress_help_names_every_route() -> None:
    text = leaf_commands()["ingress"].format_help()
    for route in create_app(Settings()).router.routes():
        if route.method != "HEAD":  # aiohttp adds HEAD to every GET
            assert f"{route.method:<4} {route.resource.canonical}  " in text, route  # type: ignore[union-attr]


def test_every_listening_command_says_a_busy_port_ends_it_with_1() -> None:
    # txmail.cli turns CannotStart (e.g. "port 8080 is already in use") into exit code 1.
    for name in ("ingress", "worker", "api", "fallback", "run"):
        assert "already in use" in EXIT_CODES[name][1], name

"""The rules file (TOML, at ``TXMAIL_RULES``): read it, check all of it, say where it is wrong.

``load_configured_rules`` is what the fallback executor calls at start-up: it returns
the checked file, secrets read from the environment, or raises ConfigError listing
every problem with its place, e.g. ``rules[1].handlers[0]: unknown handler 'smss'``
(indexes count from 0). The other processes only check that the file is TOML
(``read_rules_toml``) and read their own part of it.
"""

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from txmail.core.errors import ConfigError
from txmail.core.health_settings import CampaignTimeoutSetting, HealthRules, TimeoutSetting
from txmail.core.settings import Settings
from txmail.fallback.handler import HandlerConfig, HandlerType, resolve_secrets
from txmail.fallback.registry import resolve_handler_type
from txmail.fallback.rules import Rule

# Handler names end up in AMQP headers and idempotency keys: keep them plain.
_HANDLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")

Location = tuple[str | int, ...]


class Tracking(TimeoutSetting):
    """``[tracking]``: how long a sent email may take to be delivered (read by the workers)."""

    campaigns: dict[str, CampaignTimeoutSetting] = Field(default_factory=dict)


class _FileShape(BaseModel):
    """The top level; each part is checked on its own after it, to report all problems."""

    model_config = ConfigDict(extra="forbid")

    tracking: dict[str, Any] = Field(default_factory=dict)
    health: dict[str, Any] = Field(default_factory=dict)
    handlers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rules: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class ConfiguredHandler:
    """One ``[handlers.NAME]`` table, checked: its type and its validated config."""

    name: str
    type_name: str
    handler_type: HandlerType
    config: HandlerConfig


@dataclass(frozen=True)
class RulesFile:
    path: Path
    tracking: Tracking
    health: HealthRules
    handlers: dict[str, ConfiguredHandler]
    rules: list[Rule]


def load_configured_rules(settings: Settings) -> RulesFile | None:
    """For the executor's start-up: the checked file at ``TXMAIL_RULES`` (None when
    it is not set); raises ConfigError, with every problem, when it is invalid."""
    return None if settings.rules is None else load_rules_file(settings.rules)


def load_rules_file(path: Path) -> RulesFile:
    """Read and check the rules file; raise ConfigError naming every problem and where."""
    rules_file, problems = check_rules_file(path)
    if rules_file is None:
        raise _invalid(path, problems)
    return rules_file


def read_rules_toml(path: Path) -> dict[str, Any]:
    """The file parsed and nothing more: the ingress's start-up check (it reads none of it)."""
    data, problems = _read(path)
    if data is None:
        raise ConfigError(f"invalid rules file {path}: {problems[0]}")
    return data


def load_tracking(path: Path) -> Tracking:
    """The workers' start-up check: the file's shape, its ``[tracking]`` and ``[health]``,
    checked as
    ``txmail check-config`` checks them; handlers and rules (and their secrets) are the
    executor's."""
    try:
        shape = _FileShape.model_validate(read_rules_toml(path))
    except ValidationError as error:
        raise _invalid(path, _describe(error)) from None
    try:
        HealthRules.model_validate(shape.health)
    except ValidationError as error:
        raise _invalid(path, _describe(error, ("health",))) from None
    try:
        return Tracking.model_validate(shape.tracking)
    except ValidationError as error:
        raise _invalid(path, _describe(error, ("tracking",))) from None


def _invalid(path: Path, problems: list[str]) -> ConfigError:
    return ConfigError(f"invalid rules file {path}:\n  " + "\n  ".join(problems))


def _read(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), []
    except OSError as error:
        return None, [f"cannot read it: {error.strerror or error}"]
    except UnicodeDecodeError:
        return None, ["it is not UTF-8 text"]
    except tomllib.TOMLDecodeError as error:
        return None, [f"not valid TOML: {error}"]


def check_rules_file(path: Path) -> tuple[RulesFile | None, list[str]]:
    """The checked file and no problems, or None and every problem found."""
    data, problems = _read(path)
    if data is None:
        return None, problems
    try:
        shape = _FileShape.model_validate(data)
    except ValidationError as error:
        return None, _describe(error)

    tracking = Tracking()
    try:
        tracking = Tracking.model_validate(shape.tracking)
    except ValidationError as error:
        problems += _describe(error, ("tracking",))
    health = HealthRules()
    try:
        health = HealthRules.model_validate(shape.health)
    except ValidationError as error:
        problems += _describe(error, ("health",))

    handlers: dict[str, ConfiguredHandler] = {}
    for name, table in shape.handlers.items():
        handler, handler_problems = _check_handler(name, table)
        problems += handler_problems
        if handler is not None:
            handlers[name] = handler

    rules: list[Rule] = []
    for index, raw in enumerate(shape.rules):
        where: Location = ("rules", index)
        try:
            rules.append(Rule.model_validate(raw))
        except ValidationError as error:
            problems += _describe(error, where)
        problems += _unknown_handlers(raw.get("handlers"), shape.handlers, where)

    if problems:
        return None, problems
    return RulesFile(
        path=path, tracking=tracking, health=health, handlers=handlers, rules=rules
    ), []


def warnings(rules_file: RulesFile) -> list[str]:
    """What is valid but most likely not meant: no fallback would ever run."""
    if not rules_file.rules:
        return ["no [[rules]]: every fallback request is recorded as 'no rule' and none runs"]
    used = {name for rule in rules_file.rules for name in rule.handlers}
    return [
        f"{_place(('handlers', name))}: no rule uses it"
        for name in rules_file.handlers
        if name not in used
    ]


def _check_handler(name: str, table: dict[str, Any]) -> tuple[ConfiguredHandler | None, list[str]]:
    """The handler, or None and every problem of its table (as far as its type is known)."""
    where: Location = ("handlers", name)
    problems = []
    if not _HANDLER_NAME.fullmatch(name):
        problems.append(
            f"{_place(where)}: a handler name uses letters, digits, '.', '_' and '-' only"
        )
    type_name = table.get("type")
    if not isinstance(type_name, str):
        return None, [*problems, f"{_place((*where, 'type'))}: missing: say which handler type"]
    try:
        handler_type = resolve_handler_type(type_name)
    except ValueError as error:
        return None, [*problems, f"{_place((*where, 'type'))}: {error}"]
    secrets = resolve_secrets(
        handler_type.config_model,
        {key: value for key, value in table.items() if key != "type"},
        os.environ,
    )
    problems += [f"{_place((*where, key))}: {message}" for key, message in secrets.problems]
    try:
        config = handler_type.config_model.model_validate(secrets.table)
    except ValidationError as error:
        problems += [
            f"{_place((*where, *e['loc']))}: {_message(e)}"
            for e in error.errors()
            if not (e["loc"] and e["loc"][0] in secrets.unresolved)
        ]
    if problems:
        return None, problems
    return ConfiguredHandler(name, type_name, handler_type, config), []


def _unknown_handlers(names: object, defined: dict[str, Any], where: Location) -> list[str]:
    if not isinstance(names, list):
        return []
    known = ", ".join(sorted(defined)) or "none"
    return [
        f"{_place((*where, 'handlers', i))}: unknown handler {name!r} "
        f"(define it as [handlers.{name}]; defined: {known})"
        for i, name in enumerate(names)
        if isinstance(name, str) and name not in defined
    ]


def _describe(error: ValidationError, prefix: Location = ()) -> list[str]:
    return [f"{_place((*prefix, *e['loc']))}: {_message(e)}" for e in error.errors()]


def _message(error: Any) -> str:
    if error["type"] == "missing":
        return "missing"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return str(error["msg"]).removeprefix("Value error, ")


def _place(location: Location) -> str:
    """``rules[1].handlers[0]``, ``handlers.ops-hook.url``, ``tracking.campaigns."a b"``."""
    out = ""
    for part in location:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f'."{part}"' if out else f'"{part}"'
    return out or "(top level)"

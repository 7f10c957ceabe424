"""The rules file (TOML, at ``TXMAIL_RULES``): its one schema, read by every process.

``[tracking]`` (the workers' delivery timeouts, each a duration or "auto"), ``[health]``
(when Braze counts as degraded: ``txmail.core.health_settings``), ``[[rules]]`` (which
handlers run for which fallback) and ``[handlers.NAME]`` tables, each naming its
``type``. What a handler table holds besides its type is its type's to say: the
fallback executor checks it (``txmail.fallback.configured``), since only it may read
the handlers' secrets.

Every problem is named with its place, e.g. ``rules[1].handlers[0]: unknown handler
'smss'`` (indexes count from 0), and all of them at once.
"""

import re
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from txmail.core.errors import ConfigError
from txmail.core.events import DEADLINE_TRIGGERS, BrazeHealth, Trigger
from txmail.core.health_settings import CampaignTimeoutSetting, HealthRules, TimeoutSetting

# Handler names end up in AMQP headers and idempotency keys: keep them plain.
_HANDLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")

ANY: Literal["*"] = "*"

Location = tuple[str | int, ...]


class Tracking(TimeoutSetting):
    """``[tracking]``: how long a sent email may take to be delivered (read by the workers)."""

    campaigns: dict[str, CampaignTimeoutSetting] = Field(default_factory=dict)


class Mode(StrEnum):
    FIRST_SUCCESS = "first_success"  # stop at the first handler that succeeds
    ALL = "all"  # every handler must succeed


def _known_trigger(value: str) -> str:
    if value != ANY and value not in Trigger.__members__.values():
        known = ", ".join(t.value for t in Trigger)
        raise ValueError(f"unknown trigger {value!r} (use {known}, or '*')")
    return value


def _compiled(value: object) -> object:
    if isinstance(value, str):
        try:
            return re.compile(value)
        except re.error as error:
            raise ValueError(f"invalid regular expression {value!r}: {error}") from None
    return value


class Rule(BaseModel):
    """One ``[[rules]]`` entry; ``txmail.fallback.rules`` says which request it matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on: list[Annotated[str, AfterValidator(_known_trigger)]] = Field(min_length=1)
    campaigns: list[str] = Field(default=[ANY], min_length=1)
    reason: Annotated[re.Pattern[str], BeforeValidator(_compiled)] | None = None
    handlers: list[str] = Field(min_length=1)
    mode: Mode = Mode.FIRST_SUCCESS
    # Matches only requests stamped with this health of Braze's: the deadline triggers'.
    when_braze: BrazeHealth | None = None

    @field_validator("on", "campaigns", "handlers", mode="before")
    @classmethod
    def _a_list_not_a_string(cls, value: object, info: ValidationInfo) -> object:
        # `on = "*"` is the likeliest slip; pydantic alone only says "a valid list".
        if isinstance(value, str):
            raise ValueError(f'write a list: {info.field_name} = ["{value}"]')
        return value

    @field_validator("campaigns")
    @classmethod
    def _no_empty_campaign(cls, value: list[str]) -> list[str]:
        if any(not campaign.strip() for campaign in value):
            raise ValueError("a campaign id cannot be empty (use '*' for any campaign)")
        return value

    @field_validator("when_braze")
    @classmethod
    def _only_for_deadline_triggers(
        cls, value: BrazeHealth | None, info: ValidationInfo
    ) -> BrazeHealth | None:
        # A rule that could never match is refused rather than silently skipped.
        on: list[str] = info.data.get("on", [])  # absent when `on` itself is invalid
        unstamped = [t for t in on if t not in DEADLINE_TRIGGERS]
        if value is not None and unstamped:
            raise ValueError(
                "Braze's health is known only for timeout and not_sent requests: "
                f'on = ["timeout"] (or "not_sent", or both), not {unstamped[0]!r}'
            )
        return value

    @field_validator("handlers")
    @classmethod
    def _each_handler_once(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"each handler at most once per rule: {', '.join(repeated)}")
        return value


@dataclass(frozen=True)
class HandlerTable:
    """One ``[handlers.NAME]`` table: its type, and the rest for that type to validate."""

    name: str
    type_name: str
    table: dict[str, Any]


@dataclass(frozen=True)
class RulesFile:
    path: Path
    tracking: Tracking
    health: HealthRules
    handlers: dict[str, HandlerTable]
    rules: list[Rule]


class _FileShape(BaseModel):
    """The top level; each part is checked on its own after it, to report all problems."""

    model_config = ConfigDict(extra="forbid")

    tracking: dict[str, Any] = Field(default_factory=dict)
    health: dict[str, Any] = Field(default_factory=dict)
    handlers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rules: list[dict[str, Any]] = Field(default_factory=list)


def read_rules_file(path: Path) -> RulesFile:
    """The file, checked; ConfigError naming every problem and where when it is invalid."""
    rules_file, problems = check_rules_file(path)
    if rules_file is None or problems:
        raise invalid_rules_file(path, problems)
    return rules_file


def invalid_rules_file(path: Path, problems: list[str]) -> ConfigError:
    return ConfigError(f"invalid rules file {path}:\n  " + "\n  ".join(problems))


def check_rules_file(path: Path) -> tuple[RulesFile | None, list[str]]:
    """Every problem of the file, and as much of it as is valid (None when it cannot be
    read, is not TOML, or its top level is wrong): a tracking section that is invalid
    is left at its defaults, a rule or a handler table that is invalid is left out, so
    that the handler tables that are there can still be checked."""
    data, problems = _read(path)
    if data is None:
        return None, problems
    try:
        shape = _FileShape.model_validate(data)
    except ValidationError as error:
        return None, describe(error)

    tracking = Tracking()
    try:
        tracking = Tracking.model_validate(shape.tracking)
    except ValidationError as error:
        problems += describe(error, ("tracking",))
    health = HealthRules()
    try:
        health = HealthRules.model_validate(shape.health)
    except ValidationError as error:
        problems += describe(error, ("health",))

    handlers: dict[str, HandlerTable] = {}
    for name, table in shape.handlers.items():
        handler, handler_problems = _handler_table(name, table)
        problems += handler_problems
        if handler is not None:
            handlers[name] = handler

    rules: list[Rule] = []
    for index, raw in enumerate(shape.rules):
        where: Location = ("rules", index)
        try:
            rules.append(Rule.model_validate(raw))
        except ValidationError as error:
            problems += describe(error, where)
        problems += _unknown_handlers(raw.get("handlers"), shape.handlers, where)

    return RulesFile(
        path=path, tracking=tracking, health=health, handlers=handlers, rules=rules
    ), problems


def _read(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), []
    except OSError as error:
        return None, [f"cannot read it: {error.strerror or error}"]
    except UnicodeDecodeError:
        return None, ["it is not UTF-8 text"]
    except tomllib.TOMLDecodeError as error:
        return None, [f"not valid TOML: {error}"]


def _handler_table(name: str, table: dict[str, Any]) -> tuple[HandlerTable | None, list[str]]:
    """The table with its type (kept even when its name is wrong, so its type still
    checks the rest), or None when it names no type; and the problems found."""
    where: Location = ("handlers", name)
    problems = []
    if not _HANDLER_NAME.fullmatch(name):
        problems.append(
            f"{place(where)}: a handler name uses letters, digits, '.', '_' and '-' only"
        )
    type_name = table.get("type")
    if not isinstance(type_name, str):
        return None, [*problems, f"{place((*where, 'type'))}: missing: say which handler type"]
    rest = {key: value for key, value in table.items() if key != "type"}
    return HandlerTable(name, type_name, rest), problems


def _unknown_handlers(names: object, defined: dict[str, Any], where: Location) -> list[str]:
    if not isinstance(names, list):
        return []
    known = ", ".join(sorted(defined)) or "none"
    return [
        f"{place((*where, 'handlers', i))}: unknown handler {name!r} "
        f"(define it as [handlers.{name}]; defined: {known})"
        for i, name in enumerate(names)
        if isinstance(name, str) and name not in defined
    ]


def describe(error: ValidationError, prefix: Location = ()) -> list[str]:
    """Each of pydantic's errors as ``place: message``, under ``prefix``."""
    return [f"{place((*prefix, *e['loc']))}: {message(e)}" for e in error.errors()]


def message(error: Any) -> str:
    """One of pydantic's errors in the rules file's words."""
    if error["type"] == "missing":
        return "missing"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return str(error["msg"]).removeprefix("Value error, ")


def place(location: Location) -> str:
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

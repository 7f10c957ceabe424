"""The rules file as the executor runs it: each ``[handlers.NAME]`` table checked against
its type (a built-in or a plug-in, ``txmail.fallback.registry``), with its secrets read
from the environment.

The file's schema is ``txmail.core.rules_file``, which every process reads; only the
executor (and ``txmail check-config``) gets here, so only it needs the secrets.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from txmail.core.rules_file import (
    HandlerTable,
    Rule,
    RulesFile,
    check_rules_file,
    invalid_rules_file,
    message,
    place,
)
from txmail.fallback.handler import HandlerConfig, HandlerType
from txmail.fallback.registry import resolve_handler_type


@dataclass(frozen=True)
class ConfiguredHandler:
    """One ``[handlers.NAME]`` table, checked: its type and its validated config."""

    name: str
    type_name: str
    handler_type: HandlerType
    config: HandlerConfig


@dataclass(frozen=True)
class FallbackRules:
    """What the executor runs: the rules, and every handler they may name, configured."""

    path: Path
    handlers: dict[str, ConfiguredHandler]
    rules: list[Rule]


def configure(rules_file: RulesFile) -> FallbackRules:
    """The executor's rules; ConfigError naming every problem of a handler table."""
    configured, problems = check_handlers(rules_file)
    if configured is None:
        raise invalid_rules_file(rules_file.path, problems)
    return configured


def check_file(path: Path) -> tuple[FallbackRules | None, list[str]]:
    """What ``txmail check-config`` checks of the file at ``path``, all of it: the
    executor's rules and no problems, or None and every problem of the file."""
    rules_file, problems = check_rules_file(path)
    if rules_file is None:
        return None, problems
    rules, handler_problems = check_handlers(rules_file)
    problems += handler_problems
    return (None, problems) if problems else (rules, [])


def check_handlers(rules_file: RulesFile) -> tuple[FallbackRules | None, list[str]]:
    """The executor's rules and no problems, or None and every problem of the handler
    tables."""
    handlers: dict[str, ConfiguredHandler] = {}
    problems: list[str] = []
    for table in rules_file.handlers.values():
        handler, handler_problems = _configure_handler(table)
        problems += handler_problems
        if handler is not None:
            handlers[table.name] = handler
    if problems:
        return None, problems
    return FallbackRules(rules_file.path, handlers, rules_file.rules), []


def warnings(rules: FallbackRules) -> list[str]:
    """What is valid but most likely not meant: no fallback would ever run."""
    if not rules.rules:
        return ["no [[rules]]: every fallback request is recorded as 'no rule' and none runs"]
    used = {name for rule in rules.rules for name in rule.handlers}
    return [
        f"{place(('handlers', name))}: no rule uses it"
        for name in rules.handlers
        if name not in used
    ]


def _configure_handler(table: HandlerTable) -> tuple[ConfiguredHandler | None, list[str]]:
    """The handler, or None and every problem of its table (as far as its type is known)."""
    where = ("handlers", table.name)
    try:
        handler_type = resolve_handler_type(table.type_name)
    except ValueError as error:
        return None, [f"{place((*where, 'type'))}: {error}"]
    secrets = resolve_secrets(handler_type.config_model, table.table, os.environ)
    problems = [f"{place((*where, key))}: {problem}" for key, problem in secrets.problems]
    try:
        config = handler_type.config_model.model_validate(secrets.table)
    except ValidationError as error:
        problems += [
            f"{place((*where, *e['loc']))}: {message(e)}"
            for e in error.errors()
            if not (e["loc"] and e["loc"][0] in secrets.unresolved)
        ]
    if problems:
        return None, problems
    return ConfiguredHandler(table.name, table.type_name, handler_type, config), []


# Put in place of a secret whose variable is not set, so the rest of the table is still
# checked; whatever is said about the field itself is not reported.
_STAND_IN = "secret-not-set"


@dataclass(frozen=True)
class ResolvedSecrets:
    table: dict[str, Any]
    # (key, message) for each ``<field>_env`` that cannot be used.
    problems: list[tuple[str, str]]
    # Fields holding a stand-in: problems found in them are not real.
    unresolved: frozenset[str]


def resolve_secrets(
    config_model: type[HandlerConfig], table: Mapping[str, Any], environ: Mapping[str, str]
) -> ResolvedSecrets:
    """``table`` with each ``<field>_env`` replaced by the variable's value."""
    resolved = dict(table)
    problems: list[tuple[str, str]] = []
    unresolved = set()
    for name in config_model.secret_fields:
        env_key = f"{name}_env"
        if env_key not in resolved:
            continue
        variable = resolved.pop(env_key)
        if name in resolved:
            problems.append((env_key, f"set either {name!r} or {env_key!r}, not both"))
        elif not isinstance(variable, str) or variable not in environ:
            problems.append(
                (env_key, f"environment variable {variable!r} is not set (the executor needs it)")
            )
            resolved[name] = _STAND_IN
            unresolved.add(name)
        else:
            resolved[name] = environ[variable]
    return ResolvedSecrets(resolved, problems, frozenset(unresolved))

"""Rules files for tests, built from Python values: tomli_w writes the TOML, so no test
quotes a value or joins tables by hand."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from tests.support.servers import WEBHOOK_SECRET

Table = Mapping[str, Any]


def rule(*handlers: str, on: tuple[str, ...] = ("*",), **more: Any) -> dict[str, Any]:
    """One ``[[rules]]`` entry: on these statuses, run these handlers (``mode``,
    ``campaigns`` and the rest as keywords)."""
    return {"on": list(on), "handlers": list(handlers), **more}


def rules_toml(
    *rules: Table,
    handlers: Mapping[str, Table] | None = None,
    tracking: Table | None = None,
    health: Table | None = None,
) -> str:
    document: dict[str, Any] = {}
    if tracking is not None:
        document["tracking"] = dict(tracking)
    if health is not None:
        document["health"] = dict(health)
    if handlers:
        document["handlers"] = {name: dict(table) for name, table in handlers.items()}
    if rules:
        document["rules"] = [dict(r) for r in rules]
    return tomli_w.dumps(document)


def write_rules_file(
    path: Path,
    *rules: Table,
    handlers: Mapping[str, Table] | None = None,
    tracking: Table | None = None,
    health: Table | None = None,
) -> Path:
    path.write_text(rules_toml(*rules, handlers=handlers, tracking=tracking, health=health))
    return path


def webhook_to(receiver_url: str, on: tuple[str, ...] = ("*",), timeout: str | None = None) -> str:
    """A rules file that sends these fallbacks to the receiver's signed webhook."""
    hook: dict[str, Any] = {"type": "webhook", "url": f"{receiver_url}/hook"}
    hook["secret"] = WEBHOOK_SECRET
    if timeout is not None:
        hook["timeout"] = timeout
    return rules_toml(rule("ops-hook", on=on), handlers={"ops-hook": hook})

"""Which handlers run for a fallback request: the first rule that matches it.

A rule matches when the trigger is one of ``on`` (``"*"``: any trigger about a message,
not a change of Braze's health, which a rule names: ``on = ["braze_degraded"]``), the
campaign one of ``campaigns``
(``"*"`` matches any, also none), and, when the rule has a ``reason`` regex, the
request has a reason that the regex finds (``re.search``).
"""

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from txmail.core.events import MESSAGE_TRIGGERS, FallbackRequest, Trigger

ANY: Literal["*"] = "*"


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
    model_config = ConfigDict(extra="forbid", frozen=True)

    on: list[Annotated[str, AfterValidator(_known_trigger)]] = Field(min_length=1)
    campaigns: list[str] = Field(default=[ANY], min_length=1)
    reason: Annotated[re.Pattern[str], BeforeValidator(_compiled)] | None = None
    handlers: list[str] = Field(min_length=1)
    mode: Mode = Mode.FIRST_SUCCESS

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

    @field_validator("handlers")
    @classmethod
    def _each_handler_once(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"each handler at most once per rule: {', '.join(repeated)}")
        return value

    def matches(self, request: FallbackRequest) -> bool:
        named = request.trigger.value in self.on
        if not named and not (ANY in self.on and request.trigger in MESSAGE_TRIGGERS):
            return False
        if ANY not in self.campaigns and request.campaign_api_id not in self.campaigns:
            return False
        if self.reason is not None:
            return request.reason is not None and self.reason.search(request.reason) is not None
        return True


def select_rule(rules: Sequence[Rule], request: FallbackRequest) -> tuple[int, Rule] | None:
    """The first rule matching ``request`` and its index in the file, or None."""
    return next(((i, rule) for i, rule in enumerate(rules) if rule.matches(request)), None)

"""Delivery timeouts: the default, and per-campaign overrides from the rules file; each
a duration, or "auto": learned from what the campaign's emails take (workers/health/).

Only the rules file's ``[tracking]`` and ``[health]`` sections are read here; every
other section belongs to the fallback executor, which validates it.
"""

import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from txmail.core.errors import ConfigError
from txmail.core.health_settings import (
    AutoBounds,
    CampaignTimeoutSetting,
    HealthRules,
    TimeoutSetting,
)
from txmail.workers.health.learned import LearnedTimeouts


class _Tracking(TimeoutSetting):
    campaigns: dict[str, CampaignTimeoutSetting] = Field(default_factory=dict)


class _RulesFile(BaseModel):
    # Other sections are the fallback executor's to validate.
    model_config = ConfigDict(extra="allow")

    tracking: _Tracking = Field(default_factory=_Tracking)
    health: HealthRules = Field(default_factory=HealthRules)


@dataclass(frozen=True)
class DeliveryTimeouts:
    """How long a message of a campaign may take from `sent` to `delivered`."""

    default: timedelta
    campaigns: dict[str, timedelta] = field(default_factory=dict)
    # Timeouts written "auto": their bounds by campaign, None for every campaign without
    # a setting of its own; and the values learned so far (kept fresh by the monitor).
    auto: dict[str | None, AutoBounds] = field(default_factory=dict)
    learned: LearnedTimeouts = field(default_factory=LearnedTimeouts)

    def for_campaign(self, campaign_api_id: str | None) -> timedelta:
        bounds = self.auto_bounds(campaign_api_id)
        if bounds is not None:
            return self.learned.get(campaign_api_id) or bounds.clamp(self.default)
        if campaign_api_id is None:
            return self.default
        return self.campaigns.get(campaign_api_id, self.default)

    def auto_bounds(self, campaign_api_id: str | None) -> AutoBounds | None:
        """The bounds when this campaign's timeout is learned; None when it is fixed."""
        if campaign_api_id is not None and campaign_api_id in self.campaigns:
            return None
        if campaign_api_id is not None and campaign_api_id in self.auto:
            return self.auto[campaign_api_id]
        return self.auto.get(None)


def load_timeouts(default: timedelta, rules: Path | None) -> DeliveryTimeouts:
    """The timeouts from the environment's default and, when given, the rules file.

    Raises ConfigError naming the file and the field when the file is unusable.
    """
    if rules is None:
        return DeliveryTimeouts(default)
    tracking = _parse(rules).tracking
    auto: dict[str | None, AutoBounds] = {
        name: c.bounds() for name, c in tracking.campaigns.items() if c.is_auto
    }
    if tracking.is_auto:
        auto[None] = tracking.bounds()
    return DeliveryTimeouts(
        default=tracking.fixed() or default,
        campaigns={name: t for name, c in tracking.campaigns.items() if (t := c.fixed())},
        auto=auto,
    )


def load_health_rules(rules: Path | None) -> HealthRules:
    """The rules file's ``[health]``, or the defaults; ConfigError as ``load_timeouts``."""
    return HealthRules() if rules is None else _parse(rules).health


def _parse(rules: Path) -> _RulesFile:
    try:
        return _RulesFile.model_validate(tomllib.loads(rules.read_text()))
    except OSError as error:
        raise ConfigError(f"{rules}: cannot read the rules file: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{rules}: not valid TOML: {error}") from None
    except ValidationError as error:
        problems = [
            f"{rules}: {'.'.join(str(p) for p in e['loc'])}: "
            + e["msg"].removeprefix("Value error, ")
            for e in error.errors(include_url=False)
        ]
        raise ConfigError("\n".join(problems)) from None

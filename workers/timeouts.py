"""Delivery timeouts: the default, and per-campaign overrides from the rules file.

Only the rules file's ``[tracking]`` section is read here; every other section
belongs to the fallback executor, which validates it.
"""

import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from txmail.core.durations import PositiveDuration
from txmail.core.errors import ConfigError


class _CampaignTracking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery_timeout: PositiveDuration


class _Tracking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery_timeout: PositiveDuration | None = None
    campaigns: dict[str, _CampaignTracking] = Field(default_factory=dict)


class _RulesFile(BaseModel):
    # Other sections are the fallback executor's to validate.
    model_config = ConfigDict(extra="allow")

    tracking: _Tracking = Field(default_factory=_Tracking)


@dataclass(frozen=True)
class DeliveryTimeouts:
    """How long a message of a campaign may take from `sent` to `delivered`."""

    default: timedelta
    campaigns: dict[str, timedelta] = field(default_factory=dict)

    def for_campaign(self, campaign_api_id: str | None) -> timedelta:
        if campaign_api_id is None:
            return self.default
        return self.campaigns.get(campaign_api_id, self.default)


def load_timeouts(default: timedelta, rules: Path | None) -> DeliveryTimeouts:
    """The timeouts from the environment's default and, when given, the rules file.

    Raises ConfigError naming the file and the field when the file is unusable.
    """
    if rules is None:
        return DeliveryTimeouts(default)
    try:
        parsed = _RulesFile.model_validate(tomllib.loads(rules.read_text()))
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
    tracking = parsed.tracking
    return DeliveryTimeouts(
        default=tracking.delivery_timeout or default,
        campaigns={name: c.delivery_timeout for name, c in tracking.campaigns.items()},
    )

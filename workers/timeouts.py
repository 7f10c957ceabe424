"""Delivery timeouts: the environment's default, and the rules file's ``[tracking]``
(``txmail.core.rules_file``) over it, per campaign."""

from dataclasses import dataclass, field
from datetime import timedelta

from txmail.core.command import Configuration
from txmail.core.rules_file import Tracking


@dataclass(frozen=True)
class DeliveryTimeouts:
    """How long a message of a campaign may take from `sent` to `delivered`."""

    default: timedelta
    campaigns: dict[str, timedelta] = field(default_factory=dict)

    def for_campaign(self, campaign_api_id: str | None) -> timedelta:
        if campaign_api_id is None:
            return self.default
        return self.campaigns.get(campaign_api_id, self.default)


def delivery_timeouts(config: Configuration) -> DeliveryTimeouts:
    tracking = Tracking() if config.rules_file is None else config.rules_file.tracking
    return DeliveryTimeouts(
        default=tracking.delivery_timeout or config.settings.delivery_timeout,
        campaigns={name: c.delivery_timeout for name, c in tracking.campaigns.items()},
    )

"""Delivery timeouts: the environment's default, and the rules file's ``[tracking]``
(``txmail.core.rules_file``) over it, per campaign; each a duration, or "auto": learned
from what the campaign's emails take (workers/health/)."""

from dataclasses import dataclass, field
from datetime import timedelta

from txmail.core.command import Configuration
from txmail.core.health_settings import AutoBounds
from txmail.core.rules_file import Tracking
from txmail.workers.health.learned import LearnedTimeouts


@dataclass(frozen=True)
class DeliveryTimeouts:
    """How long a message of a campaign may take from `sent` to `delivered`."""

    default: timedelta
    campaigns: dict[str, timedelta] = field(default_factory=dict)
    # Timeouts written "auto": their bounds by campaign, None for every campaign without
    # a setting of its own; and the values learned so far (kept fresh by the monitor:
    # what the deployment learned, not what was configured, so not compared).
    auto: dict[str | None, AutoBounds] = field(default_factory=dict)
    learned: LearnedTimeouts = field(default_factory=LearnedTimeouts, compare=False)

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


def delivery_timeouts(config: Configuration) -> DeliveryTimeouts:
    tracking = Tracking() if config.rules_file is None else config.rules_file.tracking
    auto: dict[str | None, AutoBounds] = {
        name: c.bounds() for name, c in tracking.campaigns.items() if c.is_auto
    }
    if tracking.is_auto:
        auto[None] = tracking.bounds()
    return DeliveryTimeouts(
        default=tracking.fixed() or config.settings.delivery_timeout,
        campaigns={name: t for name, c in tracking.campaigns.items() if (t := c.fixed())},
        auto=auto,
    )

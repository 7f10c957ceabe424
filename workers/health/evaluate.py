"""Is Braze degraded? Pure: one scope's state and figures in, its next state out.

Degraded when, on at least ``min_sends``, the p95 sent→delivered latency or the
timeout rate is over its ``degraded_*`` threshold. Recovered only once both have been
at or under the lower ``recovered_*`` thresholds for ``recover_after`` without a
break: figures wandering around one threshold do not flap. Too few sends change
nothing, in either direction.
"""

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from txmail.core.events import BrazeHealth
from txmail.core.health_settings import HealthRules
from txmail.workers.health.figures import OVERALL, Figures, campaign_scope


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"


@dataclass(frozen=True)
class DegradedScopes:
    """The scopes the deployment last judged degraded (``health_state``)."""

    scopes: frozenset[str]

    def health_of(self, campaign_api_id: str | None) -> BrazeHealth:
        """Braze's health for a message: degraded overall or for its own campaign."""
        mine = campaign_api_id is not None and campaign_scope(campaign_api_id) in self.scopes
        return "degraded" if mine or OVERALL in self.scopes else "healthy"


@dataclass(frozen=True)
class ScopeState:
    health: Health = Health.HEALTHY
    # When the current health began; None for healthy since ever.
    since: datetime | None = None
    # While degraded: since when the figures have been under the recovered thresholds.
    calm_since: datetime | None = None


def over(figures: Figures, rules: HealthRules) -> str | None:
    """Why these figures are degraded, in words; None when they are not."""
    if figures.p95_latency is not None and figures.p95_latency > rules.degraded_p95:
        return (
            f"p95 sent→delivered {figures.p95_latency.total_seconds():g}s over "
            f"{rules.degraded_p95.total_seconds():g}s on {figures.sends} sends"
        )
    if figures.timeout_rate > rules.degraded_timeout_rate:
        return (
            f"{figures.timeout_rate:.1%} of {figures.sends} sends timed out, over "
            f"{rules.degraded_timeout_rate:.1%}"
        )
    return None


def _calm(figures: Figures, rules: HealthRules) -> bool:
    latency_calm = figures.p95_latency is None or figures.p95_latency <= rules.recovered_p95
    return latency_calm and figures.timeout_rate <= rules.recovered_timeout_rate


def evaluate(
    state: ScopeState, figures: Figures, rules: HealthRules, now: datetime
) -> tuple[ScopeState, str | None]:
    """The scope's next state, and why it changed health (None when it did not)."""
    if figures.sends < rules.min_sends:
        return state, None
    if state.health is Health.HEALTHY:
        why = over(figures, rules)
        if why is None:
            return state, None
        return ScopeState(Health.DEGRADED, since=now), why
    if not _calm(figures, rules):
        return replace(state, calm_since=None), None
    if state.calm_since is None:
        return replace(state, calm_since=now), None
    if now - state.calm_since < rules.recover_after:
        return state, None
    calm_for = (now - state.calm_since).total_seconds()
    return ScopeState(Health.HEALTHY, since=now), (
        f"under the recovered thresholds for {calm_for:g}s on {figures.sends} sends"
    )

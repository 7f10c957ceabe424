"""Braze's health and learned deadlines, the pure cores (workers/health/): a clock the
test controls, sends settling on it, the evaluator judging every 10 seconds."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.factories import tracked
from txmail.core.events import (
    FALLBACK_ATTEMPT_TYPE,
    HEALTH_CHANGE_TYPE,
    AttemptOutcome,
    FallbackAttempt,
    HealthChange,
)
from txmail.core.health_settings import AutoBounds, HealthRules
from txmail.workers.health.evaluate import DegradedScopes, Health, ScopeState, evaluate
from txmail.workers.health.figures import OVERALL, SendSample, Settled, by_scope, campaign_scope
from txmail.workers.health.learned import learn_timeout

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RULES = HealthRules(
    window=timedelta(minutes=5),
    min_sends=20,
    degraded_p95=timedelta(seconds=60),
    recovered_p95=timedelta(seconds=20),
    degraded_timeout_rate=0.05,
    recovered_timeout_rate=0.01,
    recover_after=timedelta(minutes=5),
)
JUDGE_EVERY = timedelta(seconds=10)
Sends = list[tuple[datetime, SendSample]]


def delivered(seconds: float, campaign: str = "c") -> SendSample:
    return SendSample(campaign, Settled.DELIVERED, timedelta(seconds=seconds), None)


def timed_out(campaign: str = "c") -> SendSample:
    return SendSample(campaign, Settled.TIMED_OUT, None, None)


def every(start: timedelta, end: timedelta, gap: timedelta) -> Iterator[datetime]:
    at = T0 + start
    while at < T0 + end:
        yield at
        at += gap


def steady(
    start: timedelta, end: timedelta, latency: float, campaign: str = "c", gap: float = 2
) -> Sends:
    """A send settling every ``gap`` seconds, each delivered in ``latency`` seconds."""
    return [(at, delivered(latency, campaign)) for at in every(start, end, timedelta(seconds=gap))]


def judge(sends: Sends, until: timedelta, scope: str = OVERALL) -> list[tuple[datetime, Health]]:
    """Every change of health of ``scope``, judging the window every JUDGE_EVERY."""
    state, changes = ScopeState(), []
    for now in every(timedelta(0), until, JUDGE_EVERY):
        window = [s for at, s in sends if now - RULES.window < at <= now]
        figures = by_scope(window).get(scope)
        if figures is None:
            continue
        state, why = evaluate(state, figures, RULES, now)
        if why is not None:
            changes.append((now, state.health))
    return changes


def minutes(count: float) -> timedelta:
    return timedelta(minutes=count)


def test_latency_rising_past_the_threshold_declares_degraded_once() -> None:
    sends = steady(minutes(0), minutes(10), 5) + steady(minutes(10), minutes(30), 90)
    changes = judge(sends, minutes(30))
    assert [health for _, health in changes] == [Health.DEGRADED]
    # Once more than 5% of the window's sends are slow: within a fraction of the window.
    assert minutes(10) < changes[0][0] - T0 < minutes(11)


def test_recovery_declares_recovered_once_after_it_held_for_a_while() -> None:
    sends = (
        steady(minutes(0), minutes(10), 5)
        + steady(minutes(10), minutes(20), 90)
        + steady(minutes(20), minutes(60), 5)
    )
    changes = judge(sends, minutes(60))
    assert [health for _, health in changes] == [Health.DEGRADED, Health.HEALTHY]
    # Calm once the slow sends left the window (25 min), recovered 5 minutes later.
    recovered_after = changes[1][0] - T0
    assert minutes(29) < recovered_after < minutes(31)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=21, max_value=150), min_size=100, max_size=400))
def test_noise_around_a_threshold_does_not_flap(latencies: list[float]) -> None:
    """Latencies wandering around the degraded threshold but never down to the recovered
    one: at most one change, and never back and forth."""
    sends = [
        (T0 + timedelta(seconds=3 * i), delivered(latency)) for i, latency in enumerate(latencies)
    ]
    changes = judge(sends, timedelta(seconds=3 * len(latencies)))
    assert [health for _, health in changes] in ([], [Health.DEGRADED])


def test_a_spike_while_recovering_starts_the_wait_again() -> None:
    sends = (
        steady(minutes(0), minutes(10), 90)
        + steady(minutes(10), minutes(18), 5)
        + steady(minutes(18), minutes(18.5), 50)  # over the recovered threshold, not degraded
        + steady(minutes(18.5), minutes(40), 5)
    )
    changes = judge(sends, minutes(40))
    assert [health for _, health in changes] == [Health.DEGRADED, Health.HEALTHY]
    # Calm from 15 min, broken at 18, calm again once 18.5 left the window (23.5) + 5.
    assert changes[1][0] - T0 > minutes(28)


def test_too_few_sends_declare_nothing() -> None:
    # One very slow send every 20 seconds: 15 in a 5-minute window, under min_sends.
    sends = steady(minutes(0), minutes(30), 600, gap=20)
    assert judge(sends, minutes(30)) == []


def test_timeouts_over_their_rate_declare_degraded() -> None:
    fast = steady(minutes(0), minutes(20), 5)
    late = [(at, timed_out()) for at in every(minutes(10), minutes(20), timedelta(seconds=15))]
    assert [health for _, health in judge(fast + late, minutes(20))] == [Health.DEGRADED]


def test_one_slow_campaign_is_degraded_alone() -> None:
    sends = steady(minutes(0), minutes(20), 5, campaign="fast", gap=0.5) + steady(
        minutes(5), minutes(20), 90, campaign="slow", gap=12
    )
    assert [h for _, h in judge(sends, minutes(20), campaign_scope("slow"))] == [Health.DEGRADED]
    assert judge(sends, minutes(20), campaign_scope("fast")) == []
    assert judge(sends, minutes(20), OVERALL) == []  # 1 send in 25 is slow: p95 still fast


def test_a_message_is_degraded_when_braze_is_overall_or_for_its_campaign() -> None:
    slow_campaign = DegradedScopes(frozenset({campaign_scope("slow")}))
    assert slow_campaign.health_of("slow") == "degraded"
    assert slow_campaign.health_of("fast") == "healthy"
    assert slow_campaign.health_of(None) == "healthy"
    overall = DegradedScopes(frozenset({OVERALL}))
    assert overall.health_of("fast") == overall.health_of(None) == "degraded"
    assert DegradedScopes(frozenset()).health_of("slow") == "healthy"


BOUNDS = AutoBounds(min=timedelta(seconds=30), max=timedelta(minutes=30))
DEFAULT = timedelta(minutes=10)


def learn_over(latencies: list[float], keep: int = 200) -> list[timedelta]:
    """The timeout learned after each send, from the latest ``keep`` latencies."""
    seen = [timedelta(seconds=s) for s in latencies]
    return [
        learn_timeout(seen[max(0, i - keep) : i], BOUNDS, DEFAULT, 20)
        for i in range(1, 1 + len(seen))
    ]


def test_an_auto_deadline_follows_a_campaign_whose_latency_moves() -> None:
    learned = learn_over([5.0] * 300 + [60.0] * 300 + [3000.0] * 300)
    assert learned[0] == DEFAULT  # too few sends yet: the default, within the bounds
    assert learned[299] == timedelta(seconds=30)  # p99 5s x 2 = 10s, raised to min
    assert learned[599] == timedelta(seconds=120)  # p99 60s x 2
    assert learned[-1] == timedelta(minutes=30)  # p99 50min x 2, capped at max


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=7200, allow_nan=False), max_size=300),
    st.integers(min_value=1, max_value=100),
)
def test_an_auto_deadline_stays_within_its_bounds(latencies: list[float], min_sends: int) -> None:
    seen = [timedelta(seconds=s) for s in latencies]
    learned = learn_timeout(seen, BOUNDS, timedelta(days=1), min_sends)
    assert BOUNDS.min <= learned <= BOUNDS.max
    if len(seen) < min_sends:
        assert learned == BOUNDS.max  # the default (one day), within the bounds


def test_a_health_change_and_its_handlers_attempts_are_kept_together() -> None:
    """They come back on the tracker queue like any event: recorded, never dead-lettered."""
    change = HealthChange(
        change_id="txh_1", health="degraded", campaign_api_id=None, at=T0, reason="r", figures={}
    )
    attempt = FallbackAttempt(
        idempotency_key="txh_1",
        dispatch_id=None,
        external_send_id=None,
        handler="ops-hook",
        attempt=1,
        outcome=AttemptOutcome.SUCCEEDED,
        at=T0,
    )
    kept = tracked(HEALTH_CHANGE_TYPE, change.model_dump(mode="json"), T0)
    ran = tracked(FALLBACK_ATTEMPT_TYPE, attempt.model_dump(mode="json"), T0)
    assert kept.message_key == ran.message_key == "health:txh_1"
    assert (kept.label, ran.label) == ("degraded", "ops-hook: succeeded")
    assert kept.core is None
    assert ran.core is None

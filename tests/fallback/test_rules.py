"""Which rule a fallback request gets: the first that matches, or none."""

from datetime import UTC, datetime

import pytest

from txmail.core.events import MESSAGE_TRIGGERS, BrazeHealth, FallbackRequest, Trigger
from txmail.core.rules_file import Rule
from txmail.fallback.rules import matches, select_rule

RULES = [
    Rule.model_validate(
        {"on": ["bounced"], "campaigns": ["welcome"], "reason": r"^5\d\d", "handlers": ["a"]}
    ),
    Rule.model_validate(
        {"on": ["bounced", "aborted"], "campaigns": ["welcome"], "handlers": ["b"]}
    ),
    Rule.model_validate({"on": ["timeout"], "campaigns": ["*"], "handlers": ["c"]}),
    Rule.model_validate({"on": ["aborted"], "reason": "(?i)not emailable", "handlers": ["d"]}),
    Rule.model_validate({"on": ["not_sent"], "campaigns": ["reset", "welcome"], "handlers": ["e"]}),
]


def request(
    trigger: str, campaign: str | None, reason: str | None, braze: BrazeHealth | None = None
) -> FallbackRequest:
    return FallbackRequest(
        idempotency_key="k",
        trigger=Trigger(trigger),
        dispatch_id="d",
        external_send_id="x",
        campaign_api_id=campaign,
        reason=reason,
        decided_at=datetime(2026, 1, 1, tzinfo=UTC),
        braze_health=braze,
    )


@pytest.mark.parametrize(
    ("trigger", "campaign", "reason", "expected"),
    [
        ("bounced", "welcome", "550 5.1.1 no such user", 0),  # first rule wins over the second
        ("bounced", "welcome", "421 try again later", 1),  # the regex does not match
        ("bounced", "welcome", None, 1),  # a rule with a regex needs a reason
        ("bounced", "other", "550 5.1.1", None),
        ("aborted", "welcome", "User not emailable", 1),
        ("aborted", "other", "User NOT emailable", 3),  # '*' by default; regex flags work
        ("aborted", None, "user not emailable", 3),  # no campaign still matches '*'
        ("aborted", None, None, None),
        ("timeout", None, None, 2),
        ("timeout", "anything", "x", 2),
        ("not_sent", "reset", None, 4),
        ("not_sent", None, None, None),  # a listed campaign needs that campaign
    ],
)
def test_the_first_matching_rule_wins(
    trigger: str, campaign: str | None, reason: str | None, expected: int | None
) -> None:
    found = select_rule(RULES, request(trigger, campaign, reason))
    assert (found[0] if found else None) == expected


def test_a_star_trigger_matches_every_message_trigger_but_no_health_change() -> None:
    rule = Rule.model_validate({"on": ["*"], "handlers": ["a"]})
    assert all(matches(rule, request(t.value, None, None)) for t in MESSAGE_TRIGGERS)
    # An SMS rule for every failed email must not fire when Braze is slow.
    assert not matches(rule, request(Trigger.BRAZE_DEGRADED.value, None, None))
    named = Rule.model_validate({"on": ["braze_degraded"], "handlers": ["a"]})
    assert matches(named, request(Trigger.BRAZE_DEGRADED.value, None, None))
    assert not matches(named, request(Trigger.BRAZE_RECOVERED.value, None, None))


WHILE_BRAZE = [
    Rule.model_validate({"on": ["timeout"], "when_braze": "degraded", "handlers": ["mailer"]}),
    Rule.model_validate(
        {"on": ["timeout", "not_sent"], "when_braze": "healthy", "handlers": ["a"]}
    ),
    Rule.model_validate({"on": ["*"], "handlers": ["sms"]}),
]


@pytest.mark.parametrize(
    ("trigger", "braze", "expected"),
    [
        ("timeout", "degraded", 0),
        ("timeout", "healthy", 1),
        ("not_sent", "healthy", 1),
        ("not_sent", "degraded", 2),  # the first rule names only timeouts
        ("timeout", None, 2),  # decided before requests were stamped: no `when_braze` rule
        ("bounced", None, 2),
    ],
)
def test_when_braze_matches_only_requests_stamped_with_that_health(
    trigger: str, braze: BrazeHealth | None, expected: int
) -> None:
    found = select_rule(WHILE_BRAZE, request(trigger, "welcome", None, braze))
    assert (found[0] if found else None) == expected

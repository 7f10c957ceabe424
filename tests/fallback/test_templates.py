"""Templates substitute names and nothing else."""

from datetime import UTC, datetime

import pytest

from txmail.core.events import FallbackRequest, Recipient, Trigger
from txmail.fallback.handler import PermanentFailure
from txmail.fallback.templates import TextTemplate, template_context

REQUEST = FallbackRequest(
    idempotency_key="k",
    trigger=Trigger.BOUNCED,
    dispatch_id="d",
    external_send_id="order-9",
    campaign_api_id=None,
    reason="550 no such user",
    braze_timestamps={"bounced_at": "2026-01-01T00:00:00+00:00"},
    recipient=Recipient(phone="+15550002222"),
    variables={"first_name": "Ann", "trigger": "spoofed", "items": 3},
    decided_at=datetime(2026, 1, 1, tzinfo=UTC),
)


def render(text: str) -> str:
    return TextTemplate(text).render(template_context(REQUEST), "body")


def test_names_from_the_request_and_the_registered_variables() -> None:
    assert render("$first_name: ${items} items, $trigger at $bounced_at") == (
        "Ann: 3 items, bounced at 2026-01-01T00:00:00+00:00"
    )
    assert render("$$5 to $recipient_phone") == "$5 to +15550002222"


def test_nothing_but_names_is_looked_up() -> None:
    # No format-string fields, no attribute access, no indexing: only $name.
    assert render("{first_name.__class__} %(first_name)s {0}") == (
        "{first_name.__class__} %(first_name)s {0}"
    )
    assert render("$first_name.__class__") == "Ann.__class__"
    with pytest.raises(ValueError, match="invalid template"):
        TextTemplate("${first_name.__class__}")


def test_a_missing_name_is_a_permanent_failure_saying_which() -> None:
    with pytest.raises(PermanentFailure, match=r"'body' uses \$campaign_api_id, \$nope"):
        render("$campaign_api_id $nope")


def test_an_invalid_template_is_refused_when_loaded() -> None:
    with pytest.raises(ValueError, match="invalid template"):
        TextTemplate("costs $")


def test_a_timeout_names_braze_health_and_a_bounce_does_not() -> None:
    timeout = REQUEST.model_copy(
        update={"trigger": Trigger.TIMEOUT, "reason": None, "braze_health": "degraded"}
    )
    body = TextTemplate("Braze is $braze_health")

    assert body.render(template_context(timeout), "body") == "Braze is degraded"
    with pytest.raises(PermanentFailure, match=r"\$braze_health"):
        body.render(template_context(REQUEST), "body")

"""Which handlers run for a fallback request: the first rule that matches it.

A rule matches when the trigger is one of ``on`` (``"*"``: any trigger about a message,
not a change of Braze's health, which a rule names: ``on = ["braze_degraded"]``), the
campaign one of ``campaigns`` (``"*"`` matches any, also none), when the rule has
``when_braze``, the request was stamped with that health of Braze's (only deadline
triggers are), and, when the rule has a ``reason`` regex, the request has a reason that
the regex finds (``re.search``). The rules' schema is ``txmail.core.rules_file``.
"""

from collections.abc import Sequence

from txmail.core.events import MESSAGE_TRIGGERS, FallbackRequest
from txmail.core.rules_file import ANY, Rule


def matches(rule: Rule, request: FallbackRequest) -> bool:
    named = request.trigger.value in rule.on
    if not named and not (ANY in rule.on and request.trigger in MESSAGE_TRIGGERS):
        return False
    if ANY not in rule.campaigns and request.campaign_api_id not in rule.campaigns:
        return False
    if rule.when_braze is not None and request.braze_health != rule.when_braze:
        return False
    if rule.reason is not None:
        return request.reason is not None and rule.reason.search(request.reason) is not None
    return True


def select_rule(rules: Sequence[Rule], request: FallbackRequest) -> tuple[int, Rule] | None:
    """The first rule matching ``request`` and its index in the file, or None."""
    return next(((i, rule) for i, rule in enumerate(rules) if matches(rule, request)), None)

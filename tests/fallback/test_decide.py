"""What happens after an attempt: done, retry or park, from the results alone."""

import pytest

from txmail.core.rules_file import Rule
from txmail.fallback.policy.progress import RequestProgress
from txmail.fallback.policy.verdict import HandlerResult, NextStep, ResultKind, decide

OK, TRANSIENT, PERMANENT = ResultKind.SUCCEEDED, ResultKind.TRANSIENT, ResultKind.PERMANENT
DONE, RETRY, PARK = NextStep.DONE, NextStep.RETRY, NextStep.PARK


def rule(mode: str) -> Rule:
    return Rule.model_validate({"on": ["*"], "handlers": ["a", "b"], "mode": mode})


@pytest.mark.parametrize(
    ("mode", "before", "results", "can_retry", "expected"),
    [
        ("first_success", RequestProgress(), {"a": OK}, True, DONE),
        ("first_success", RequestProgress(), {"a": TRANSIENT, "b": OK}, True, DONE),
        ("first_success", RequestProgress(), {"a": TRANSIENT, "b": PERMANENT}, True, RETRY),
        ("first_success", RequestProgress(), {"a": TRANSIENT, "b": TRANSIENT}, False, PARK),
        ("first_success", RequestProgress(), {"a": PERMANENT, "b": PERMANENT}, True, PARK),
        ("first_success", RequestProgress(failed=frozenset("a")), {"b": PERMANENT}, True, PARK),
        ("all", RequestProgress(), {"a": OK, "b": OK}, True, DONE),
        ("all", RequestProgress(), {"a": OK, "b": TRANSIENT}, True, RETRY),
        ("all", RequestProgress(succeeded=frozenset("a")), {"b": OK}, True, DONE),
        ("all", RequestProgress(), {"a": PERMANENT, "b": TRANSIENT}, True, RETRY),
        ("all", RequestProgress(failed=frozenset("a")), {"b": OK}, True, PARK),
        ("all", RequestProgress(), {"a": OK, "b": TRANSIENT}, False, PARK),
    ],
)
def test_the_decision_table(
    mode: str,
    before: RequestProgress,
    results: dict[str, ResultKind],
    can_retry: bool,
    expected: NextStep,
) -> None:
    outcome = [HandlerResult(name, kind, "boom") for name, kind in results.items()]
    assert decide(rule(mode), before, outcome, can_retry).next_step is expected


def test_progress_remembers_successes_and_permanent_failures() -> None:
    results = [HandlerResult("a", OK), HandlerResult("b", PERMANENT, "400")]
    verdict = decide(rule("all"), RequestProgress(attempt=2), results, can_retry=True)
    assert verdict.progress == RequestProgress(
        attempt=3, succeeded=frozenset("a"), failed=frozenset("b")
    )
    assert verdict.reason == "every remaining handler failed permanently; b: permanent: 400"


def test_progress_survives_the_trip_through_headers() -> None:
    progress = RequestProgress(
        attempt=4, succeeded=frozenset({"sms", "hook"}), failed=frozenset({"x"}), replays=1
    )
    assert RequestProgress.from_headers(progress.to_headers()) == progress
    assert progress.for_replay() == RequestProgress(succeeded=progress.succeeded, replays=2)


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"x-txmail-attempt": "3", "x-txmail-succeeded": "a,b"}, {"x-txmail-attempt": -1}],
)
def test_mangled_headers_count_as_a_fresh_start(headers: dict[str, object] | None) -> None:
    assert RequestProgress.from_headers(headers) == RequestProgress()

"""What happens after an attempt: done, retry or park, from the results alone."""

import pytest

from txmail.core.rules_file import Rule
from txmail.fallback.chain import Decision, HandlerResult, ResultKind, decide
from txmail.fallback.progress import Progress

OK, TRANSIENT, PERMANENT = ResultKind.SUCCEEDED, ResultKind.TRANSIENT, ResultKind.PERMANENT


def rule(mode: str) -> Rule:
    return Rule.model_validate({"on": ["*"], "handlers": ["a", "b"], "mode": mode})


@pytest.mark.parametrize(
    ("mode", "before", "results", "can_retry", "expected"),
    [
        ("first_success", Progress(), {"a": OK}, True, Decision.DONE),
        ("first_success", Progress(), {"a": TRANSIENT, "b": OK}, True, Decision.DONE),
        ("first_success", Progress(), {"a": TRANSIENT, "b": PERMANENT}, True, Decision.RETRY),
        ("first_success", Progress(), {"a": TRANSIENT, "b": TRANSIENT}, False, Decision.PARK),
        ("first_success", Progress(), {"a": PERMANENT, "b": PERMANENT}, True, Decision.PARK),
        ("first_success", Progress(failed=frozenset("a")), {"b": PERMANENT}, True, Decision.PARK),
        ("all", Progress(), {"a": OK, "b": OK}, True, Decision.DONE),
        ("all", Progress(), {"a": OK, "b": TRANSIENT}, True, Decision.RETRY),
        ("all", Progress(succeeded=frozenset("a")), {"b": OK}, True, Decision.DONE),
        ("all", Progress(), {"a": PERMANENT, "b": TRANSIENT}, True, Decision.RETRY),
        ("all", Progress(failed=frozenset("a")), {"b": OK}, True, Decision.PARK),
        ("all", Progress(), {"a": OK, "b": TRANSIENT}, False, Decision.PARK),
    ],
)
def test_the_decision_table(
    mode: str,
    before: Progress,
    results: dict[str, ResultKind],
    can_retry: bool,
    expected: Decision,
) -> None:
    outcome = [HandlerResult(name, kind, "boom") for name, kind in results.items()]
    assert decide(rule(mode), before, outcome, can_retry).decision is expected


def test_progress_remembers_successes_and_permanent_failures() -> None:
    results = [HandlerResult("a", OK), HandlerResult("b", PERMANENT, "400")]
    verdict = decide(rule("all"), Progress(attempt=2), results, can_retry=True)
    assert verdict.progress == Progress(attempt=3, succeeded=frozenset("a"), failed=frozenset("b"))
    assert verdict.reason == "every remaining handler failed permanently; b: permanent: 400"


def test_progress_survives_the_trip_through_headers() -> None:
    progress = Progress(
        attempt=4, succeeded=frozenset({"sms", "hook"}), failed=frozenset({"x"}), replays=1
    )
    assert Progress.from_headers(progress.to_headers()) == progress
    assert progress.for_replay() == Progress(succeeded=progress.succeeded, replays=2)


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"x-txmail-attempt": "3", "x-txmail-succeeded": "a,b"}, {"x-txmail-attempt": -1}],
)
def test_mangled_headers_count_as_a_fresh_start(headers: dict[str, object] | None) -> None:
    assert Progress.from_headers(headers) == Progress()

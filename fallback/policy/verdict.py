"""What happens to a request after an attempt: done, retried or parked, decided from the
rule, the progress so far and this attempt's handler results. Pure."""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from txmail.core.rules_file import Mode, Rule
from txmail.fallback.policy.progress import RequestProgress


class ResultKind(StrEnum):
    SUCCEEDED = "succeeded"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    # A copy of the request holds the call right now (in this executor or another):
    # not called, and the chain stops there; the request is tried again later.
    BUSY = "busy"


@dataclass(frozen=True)
class HandlerResult:
    handler: str
    kind: ResultKind
    detail: str = ""


class NextStep(StrEnum):
    DONE = "done"
    RETRY = "retry"
    PARK = "park"


@dataclass(frozen=True)
class Verdict:
    next_step: NextStep
    progress: RequestProgress  # after this attempt
    reason: str = ""  # why it is parked


def decide(
    rule: Rule, progress: RequestProgress, results: Sequence[HandlerResult], can_retry: bool
) -> Verdict:
    after = progress.next_attempt(
        succeeded=(r.handler for r in results if r.kind is ResultKind.SUCCEEDED),
        failed=(r.handler for r in results if r.kind is ResultKind.PERMANENT),
    )
    if rule.mode is Mode.FIRST_SUCCESS:
        done = bool(after.succeeded & set(rule.handlers))
        pending = [] if done else [h for h in rule.handlers if h not in after.failed]
    else:
        done = set(rule.handlers) <= after.succeeded
        pending = [h for h in rule.handlers if h not in after.succeeded | after.failed]
    if done:
        return Verdict(NextStep.DONE, after)
    if pending and can_retry:
        return Verdict(NextStep.RETRY, after)
    return Verdict(NextStep.PARK, after, _park_reason(rule, after, results, bool(pending)))


def _park_reason(
    rule: Rule, after: RequestProgress, results: Sequence[HandlerResult], retries_exhausted: bool
) -> str:
    failures = [f"{r.handler}: {r.kind.value}: {r.detail}" for r in results if r.detail]
    earlier = sorted((after.failed & set(rule.handlers)) - {r.handler for r in results})
    if earlier:
        failures.append(f"failed permanently on an earlier attempt: {', '.join(earlier)}")
    head = (
        f"retries exhausted after {after.attempt} attempts"
        if retries_exhausted
        else "every remaining handler failed permanently"
    )
    return f"{head}; " + "; ".join(failures)

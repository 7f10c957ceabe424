"""Run one rule's handler chain for one request.

``run_handler`` calls a handler (through its circuit breaker, within its timeout) and
turns whatever happened into a HandlerResult; ``call_once`` wraps that in a claim on
the call ledger, so no copy of the request calls a handler that already succeeded.
What happens next is ``txmail.fallback.policy.verdict.decide``'s to say.
"""

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import structlog

from txmail.core.durations import format_duration
from txmail.core.events import CIRCUIT_OPEN_DETAIL, FallbackRequest
from txmail.core.rules_file import Mode, Rule
from txmail.fallback import metrics
from txmail.fallback.handler import (
    FallbackHandler,
    PermanentFailure,
    TransientFailure,
    UnusableRequest,
)
from txmail.fallback.ledger import (
    CallLedger,
    CallState,
    Claim,
    ClaimVerdict,
    LedgerUnavailable,
)
from txmail.fallback.policy.circuit import Circuits
from txmail.fallback.policy.progress import RequestProgress
from txmail.fallback.policy.verdict import HandlerResult, ResultKind

log = structlog.get_logger(__name__)

# How long a claim outlasts the handler's own timeout: time to record the outcome.
LEASE_MARGIN = timedelta(seconds=5)
# How soon recording an outcome is tried again while the ledger is unreachable.
RECORD_RETRY_INTERVAL = 0.25  # seconds


@dataclass(frozen=True)
class ReadyHandler:
    """A handler built from the rules file, with the limit on one call of it."""

    name: str
    handler: FallbackHandler
    timeout: timedelta


def call_key(request: FallbackRequest, handler: str) -> str:
    """Stable per message and handler: the same on every retry and replay."""
    return f"{request.idempotency_key}:{handler}"


async def run_handler(
    ready: ReadyHandler, request: FallbackRequest, circuits: Circuits
) -> HandlerResult:
    circuit = circuits[ready.name]
    if not circuit.try_call():
        return HandlerResult(ready.name, ResultKind.TRANSIENT, CIRCUIT_OPEN_DETAIL)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(ready.timeout.total_seconds()):
            try:
                await ready.handler.send(request, call_key(request, ready.name))
            finally:
                metrics.HANDLER_SECONDS.labels(ready.name).observe(time.perf_counter() - started)
    except UnusableRequest as failure:
        circuit.abandon_call()  # the provider was not called: nothing learnt about it
        return HandlerResult(ready.name, ResultKind.PERMANENT, str(failure))
    except PermanentFailure as failure:
        circuit.record_success()  # it answered: the provider is up, the request is wrong
        return HandlerResult(ready.name, ResultKind.PERMANENT, str(failure))
    except TransientFailure as failure:
        circuit.record_failure(str(failure))
        return HandlerResult(ready.name, ResultKind.TRANSIENT, str(failure))
    except TimeoutError:
        detail = f"timed out after {format_duration(ready.timeout)}"
        circuit.record_failure(detail)
        return HandlerResult(ready.name, ResultKind.TRANSIENT, detail)
    except asyncio.CancelledError:
        circuit.abandon_call()
        raise
    except Exception as error:  # a handler's bug must not stop the executor
        log.exception("handler raised an unexpected error", handler=ready.name)
        detail = f"unexpected error: {type(error).__name__}: {error}"
        circuit.record_failure(detail)
        return HandlerResult(ready.name, ResultKind.TRANSIENT, detail)
    circuit.record_success()
    return HandlerResult(ready.name, ResultKind.SUCCEEDED)


async def call_once(
    ready: ReadyHandler,
    request: FallbackRequest,
    progress: RequestProgress,
    circuits: Circuits,
    ledger: CallLedger,
) -> HandlerResult:
    """Call the handler unless the ledger shows a copy of this request already did (or
    is doing it now), and record the outcome before anything else happens to it.
    LedgerUnavailable before the call: nothing was called."""
    lease = ready.timeout + LEASE_MARGIN
    lease_ends = time.monotonic() + lease.total_seconds()
    claim = await ledger.claim(request.idempotency_key, ready.name, progress.replays, lease)
    if claim.verdict is ClaimVerdict.SUCCEEDED:
        return HandlerResult(ready.name, ResultKind.SUCCEEDED, "succeeded before: not called again")
    if claim.verdict is ClaimVerdict.FAILED_PERMANENTLY:
        detail = "failed permanently before: not called again (a replay calls it again)"
        return HandlerResult(ready.name, ResultKind.PERMANENT, detail)
    if claim.verdict is ClaimVerdict.BUSY:
        detail = "a copy of this request is calling it now: not called"
        return HandlerResult(ready.name, ResultKind.BUSY, detail)
    if claim.verdict is ClaimVerdict.CALL_AFTER_LOST_OUTCOME:
        log.warning(
            "calling again: an earlier call's outcome was never recorded "
            "(its executor stopped mid-call); the provider may get it twice",
            handler=ready.name,
            idempotency_key=request.idempotency_key,
        )
    result = await run_handler(ready, request, circuits)
    try:
        await _record_within_lease(ledger, claim, _recorded_state(result.kind), lease_ends)
    except LedgerUnavailable as error:
        # The result still travels in this attempt's events and retry headers; only a
        # copy of the request arriving after the lease would call it again.
        log.error(
            "handler outcome not recorded in the call ledger",
            handler=ready.name,
            idempotency_key=request.idempotency_key,
            result=result.kind.value,
            error=str(error),
        )
    return result


async def _record_within_lease(
    ledger: CallLedger, claim: Claim, state: CallState, lease_ends: float
) -> None:
    """Record the outcome, trying again while the ledger is unreachable and the claim's
    lease lasts: until it ends no copy of the request may call the handler, so an
    outcome recorded by then leaves nothing to call twice (a database that blinks as
    the call returns would otherwise leave the claim open for good). Recording is
    idempotent. LedgerUnavailable once the lease is over."""
    while True:
        try:
            await ledger.record(claim, state)
            return
        except LedgerUnavailable:
            if time.monotonic() + RECORD_RETRY_INTERVAL >= lease_ends:
                raise
        await asyncio.sleep(RECORD_RETRY_INTERVAL)


def _recorded_state(kind: ResultKind) -> CallState:
    if kind is ResultKind.SUCCEEDED:
        return CallState.SUCCEEDED
    if kind is ResultKind.PERMANENT:
        return CallState.FAILED_PERMANENTLY
    return CallState.FAILED_TRANSIENTLY


async def run_chain(
    rule: Rule,
    handlers: Mapping[str, ReadyHandler],
    request: FallbackRequest,
    progress: RequestProgress,
    circuits: Circuits,
    ledger: CallLedger,
) -> list[HandlerResult]:
    """Call the rule's handlers in order, skipping those that already succeeded or
    failed for good; in ``first_success`` mode, stop at the first success.

    LedgerUnavailable when the ledger fails before anything happened in this attempt;
    after that, the chain stops with what it has, so the outcomes so far are kept (in
    the attempt events and retry headers) and the rest is retried."""
    if rule.mode is Mode.FIRST_SUCCESS and progress.succeeded & set(rule.handlers):
        return []
    results: list[HandlerResult] = []
    for name in rule.handlers:
        if name in progress.succeeded or name in progress.failed:
            continue
        try:
            result = await call_once(handlers[name], request, progress, circuits, ledger)
        except LedgerUnavailable as error:
            if not results:
                raise
            results.append(HandlerResult(name, ResultKind.TRANSIENT, f"not called: {error}"))
            break
        results.append(result)
        if result.kind is ResultKind.BUSY:
            break
        if rule.mode is Mode.FIRST_SUCCESS and result.kind is ResultKind.SUCCEEDED:
            break
    return results

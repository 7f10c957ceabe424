"""The core's messages as table rows: shared by both backends so they store the same thing."""

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import BaseModel

from txmail.core.events import FallbackRequest
from txmail.workers.health.evaluate import DegradedScopes
from txmail.workers.state import (
    Decision,
    Event,
    Message,
    Outcome,
    claim_deadline,
    deadline,
    evolve,
    fallback_request,
    keep_learned_timeout,
    outcome,
    reason,
)
from txmail.workers.store.protocol import (
    DecisionView,
    FailureSummary,
    MessageView,
    PendingRequest,
    TimelineEntry,
    TrackedEvent,
)
from txmail.workers.timeouts import DeliveryTimeouts


# A tuple: a frozen dataclass's ten fields cost a sweep's claim 4 % of its Python.
class MessageRow(NamedTuple):
    key: str
    dispatch_id: str | None
    external_send_id: str | None
    campaign_api_id: str | None
    outcome: str
    reason: str | None
    deadline: datetime | None
    decision_trigger: str | None
    summary: str  # the core's Message as JSON: the one source the other columns derive from
    # Set only by the change that made the decision; the store keeps the first one.
    request: str | None


def _json(model: BaseModel) -> str:
    """``model.model_dump_json()``: the same serializer, called without that method's
    sixteen keyword arguments, which cost a fifth of a fallback request's dump."""
    return model.__pydantic_serializer__.to_json(model).decode()


def to_row(
    message: Message, timeouts: DeliveryTimeouts, request: FallbackRequest | None
) -> MessageRow:
    message = keep_learned_timeout(message, timeouts)
    return MessageRow(
        key=message.key,
        dispatch_id=message.dispatch_id,
        external_send_id=message.external_send_id,
        campaign_api_id=message.campaign_api_id,
        outcome=outcome(message).value,
        reason=reason(message),
        deadline=deadline(message, timeouts),
        decision_trigger=message.decision.trigger.value if message.decision else None,
        summary=_json(message),
        request=_json(request) if request else None,
    )


def evolve_all(
    loaded: Mapping[str, str | None], events: Sequence[TrackedEvent], now: datetime
) -> list[tuple[Message, Decision | None]]:
    """Merge a batch into the messages it touches; ``loaded`` maps each key to its summary."""
    by_key: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if event.core is not None:
            by_key[event.message_key].append(event.core)
    results = []
    for key, core_events in by_key.items():
        summary = loaded.get(key)
        message = Message.model_validate_json(summary) if summary else Message(key=key)
        results.append(evolve(message, core_events, now))
    return results


def message_keys(events: Sequence[TrackedEvent]) -> list[str]:
    """Keys of the messages a batch changes, sorted so concurrent writers lock in one order."""
    return sorted({e.message_key for e in events if e.core is not None})


def to_rows(
    changed: Iterable[tuple[Message, Decision | None]], timeouts: DeliveryTimeouts
) -> tuple[list[MessageRow], list[PendingRequest]]:
    """Rows to write, and the fallback requests of the decisions made in this change.
    ``changed`` may be a generator: each message is dropped once it is a row."""
    rows, decided = [], []
    for message, decision in changed:
        request = fallback_request(message) if decision else None
        rows.append(to_row(message, timeouts, request))
        if request is not None:
            decided.append(PendingRequest(message.key, request))
    return rows, decided


def claimed_rows(
    due: Iterable[str],
    timeouts: DeliveryTimeouts,
    now: datetime,
    due_by: datetime | None,
    degraded: DegradedScopes,
) -> tuple[list[MessageRow], list[PendingRequest]]:
    """What a sweep writes for the summaries of the due messages it claimed, and the
    requests of the timeouts it decided; ``degraded`` as the claiming transaction read it."""

    def claimed(summary: str) -> tuple[Message, Decision | None]:
        message = Message.model_validate_json(summary)
        health = degraded.health_of(message.campaign_api_id)
        return claim_deadline(message, timeouts, now, due_by, braze_health=health)

    # One message at a time, not a list of them all: a thousand messages kept alive to
    # the end make the collector's full pass (tens of ms) more frequent.
    return to_rows((claimed(summary) for summary in due), timeouts)


def view(
    message: Message,
    *,
    outcome: str,
    reason: str | None,
    deadline: datetime | None,
    request: str | None,
    published_at: datetime | None,
    created_at: datetime,
    updated_at: datetime,
    timeline: list[TimelineEntry],
) -> MessageView:
    """The read model both stores return."""
    decision = message.decision
    return MessageView(
        key=message.key,
        dispatch_id=message.dispatch_id,
        external_send_id=message.external_send_id,
        campaign_api_id=message.campaign_api_id,
        outcome=Outcome(outcome),
        reason=reason,
        deadline=deadline,
        learned_timeout=message.learned_timeout,
        statuses=message.statuses,
        registration=message.registration,
        decision=None
        if decision is None
        else DecisionView(
            trigger=decision.trigger.value,
            decided_at=decision.decided_at,
            deadline=decision.deadline,
            published_at=published_at,
            request=FallbackRequest.model_validate_json(request) if request else None,
        ),
        timeline=timeline,
        created_at=created_at,
        updated_at=updated_at,
    )


def failure_summary(row: Sequence[Any], updated_at: datetime) -> FailureSummary:
    """A row of RECENT_FAILURES, with its last column (updated_at) as each database
    gives times back."""
    key, dispatch_id, external_send_id, campaign_api_id, outcome, reason, trigger, _ = row
    return FailureSummary(
        key=key,
        dispatch_id=dispatch_id,
        external_send_id=external_send_id,
        campaign_api_id=campaign_api_id,
        outcome=Outcome(outcome),
        reason=reason,
        trigger=trigger,
        updated_at=updated_at,
    )

"""The fallback executor's metrics: attempts, handler calls, retries, parking, circuits.

Handler names label them: their number is bounded by the rules file.
"""

from collections.abc import Iterable
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from txmail.core.metrics import LATENCY_BUCKETS
from txmail.fallback.policy.circuit import Circuits, CircuitState

REGISTRY = CollectorRegistry()

# The handler label of a request no rule matched: no handler ran.
NO_HANDLER = "none"

ATTEMPTS = Counter(
    "txmail_fallback_attempts_total",
    "Fallback attempts recorded, by handler and outcome "
    "(succeeded, failed, retrying, parked, no_rule).",
    ["handler", "outcome"],
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    "txmail_fallback_handler_seconds",
    "Time one handler call took, whatever its result (not counting calls the circuit "
    "or the call ledger spared).",
    ["handler"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RETRIES = Counter(
    "txmail_fallback_retries_scheduled_total",
    "Fallback requests put on a delay queue for another attempt.",
    registry=REGISTRY,
)
PARKED = Counter(
    "txmail_fallback_parked_total",
    "Fallback requests parked (they need a person: txmail dlq), unreadable ones included.",
    registry=REGISTRY,
)
CIRCUIT_STATE = Gauge(
    "txmail_fallback_circuit_state",
    "1 for the state each handler's circuit breaker is in (closed, open, half_open), "
    "else 0; per executor process.",
    ["handler", "state"],
    registry=REGISTRY,
)


def watch_circuits(circuits: Circuits, handlers: Iterable[str]) -> None:
    """Read each handler's circuit state at scrape time."""
    for handler in handlers:
        for state in CircuitState:
            CIRCUIT_STATE.labels(handler, state.value).set_function(
                partial(_is_in, circuits, handler, state)
            )


def _is_in(circuits: Circuits, handler: str, state: CircuitState) -> float:
    return float(circuits[handler].state is state)

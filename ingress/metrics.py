"""The ingress's metrics: what Braze posted, and what it was answered.

On the postback path every request counts, so the label children are bound once here
and a request only looks one up and increments it.
"""

from functools import cache

from prometheus_client import CollectorRegistry, Counter

from txmail.core.events import KNOWN_STATUSES

REGISTRY = CollectorRegistry()

# A status Braze does not document is data, not a label of its own: label values stay
# bounded whatever is posted.
OTHER_STATUS = "other"
# The request was refused before its postbacks were read (a wrong token, overload,
# malformed JSON, a failed validation): no status to count them under.
UNREAD = "unread"

POSTBACKS_RECEIVED = Counter(
    "txmail_postbacks_received_total",
    "Postbacks posted to the ingress, by Braze status and the HTTP status answered.",
    ["status", "answer"],
    registry=REGISTRY,
)
SENDS_REGISTERED = Counter(
    "txmail_sends_registered_total",
    "Requests to POST /v1/sends, by the HTTP status answered.",
    ["answer"],
    registry=REGISTRY,
)

_STATUSES = (*sorted(KNOWN_STATUSES), OTHER_STATUS)
# The two answers a request whose postbacks were read can get.
_ACCEPTED = {status: POSTBACKS_RECEIVED.labels(status, "202") for status in _STATUSES}
_NOT_CONFIRMED = {status: POSTBACKS_RECEIVED.labels(status, "503") for status in _STATUSES}


def count_accepted(status: str) -> None:
    _ACCEPTED.get(status, _ACCEPTED[OTHER_STATUS]).inc()


def count_not_confirmed(status: str) -> None:
    _NOT_CONFIRMED.get(status, _NOT_CONFIRMED[OTHER_STATUS]).inc()


@cache
def _answered(counter: Counter, *labels: str) -> Counter:
    """A child bound once per answer: HTTP statuses are few."""
    return counter.labels(*labels)


def count_unread(answer: int) -> None:
    """Count a request refused before its postbacks were read, as one."""
    _answered(POSTBACKS_RECEIVED, UNREAD, str(answer)).inc()


def count_registration(answer: int) -> None:
    _answered(SENDS_REGISTERED, str(answer)).inc()

"""The ingress's metrics: what Braze posted, and what it was answered.

On the postback path every request counts, so the label children are bound once here
and a request only looks one up and increments it.
"""

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
_ANSWERS = ("202", "503")  # the two answers a request whose postbacks were read can get
_BOUND = {
    (status, answer): POSTBACKS_RECEIVED.labels(status, answer)
    for status in _STATUSES
    for answer in _ANSWERS
}


def count_postbacks(statuses: list[str], answer: int) -> None:
    """Count the postbacks of one request that was read, by status."""
    code = str(answer)
    for status in statuses:
        label = status if status in KNOWN_STATUSES else OTHER_STATUS
        _BOUND[(label, code)].inc()


def count_unread(answer: int) -> None:
    """Count a request refused before its postbacks were read, as one."""
    POSTBACKS_RECEIVED.labels(UNREAD, str(answer)).inc()

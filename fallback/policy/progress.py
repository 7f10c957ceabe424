"""How far a fallback request got, carried in its AMQP headers from attempt to attempt.

So a retry (or a replay from the parking queue) knows which handlers already
succeeded and does not run them again, and which failed for good. The call ledger
(fallback/ledger) is what guards against copies of a request; these headers carry
what one copy learnt, even while the ledger cannot record it.

Every copy the executor or ``txmail dlq`` publishes of a request (``*_copy``) is made
here, so its headers are written in one place.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from txmail.core.broker import TO_QUEUE, Outgoing, Republishable

ATTEMPT: Final = "x-txmail-attempt"
SUCCEEDED: Final = "x-txmail-succeeded"
FAILED: Final = "x-txmail-failed"
REPLAYS: Final = "x-txmail-replays"
PARKED_REASON: Final = "x-txmail-parked-reason"
PARKED_AT: Final = "x-txmail-parked-at"


@dataclass(frozen=True)
class RequestProgress:
    attempt: int = 0  # attempts made before this one
    succeeded: frozenset[str] = field(default_factory=frozenset)
    failed: frozenset[str] = field(default_factory=frozenset)  # permanently
    replays: int = 0  # times ops replayed it from the parking queue

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None) -> "RequestProgress":
        """Read them leniently: headers someone else mangled count as a fresh start."""
        headers = headers or {}
        return cls(
            attempt=_count(headers.get(ATTEMPT)),
            succeeded=_names(headers.get(SUCCEEDED)),
            failed=_names(headers.get(FAILED)),
            replays=_count(headers.get(REPLAYS)),
        )

    def to_headers(self) -> dict[str, Any]:
        return {
            ATTEMPT: self.attempt,
            SUCCEEDED: sorted(self.succeeded),
            FAILED: sorted(self.failed),
            REPLAYS: self.replays,
        }

    def next_attempt(self, succeeded: Iterable[str], failed: Iterable[str]) -> "RequestProgress":
        return RequestProgress(
            attempt=self.attempt + 1,
            succeeded=self.succeeded | frozenset(succeeded),
            failed=self.failed | frozenset(failed),
            replays=self.replays,
        )

    def for_replay(self) -> "RequestProgress":
        """A replay starts the retry schedule over and gives every handler that failed
        another chance (presumably the cause was fixed), but keeps what succeeded. The
        replay count lets the call ledger tell this new chance from a copy of the
        request that failed."""
        return RequestProgress(succeeded=self.succeeded, replays=self.replays + 1)


def retry_copy(
    message: Republishable,
    after: RequestProgress,
    delay_queue: str,
    expiration: timedelta,
) -> Outgoing:
    """The request for its next attempt, through a delay queue."""
    return Outgoing.again(message, TO_QUEUE, delay_queue, after.to_headers(), expiration)


def parked_copy(
    message: Republishable,
    after: RequestProgress,
    parking_queue: str,
    reason: str,
    at: datetime,
) -> Outgoing:
    """The request for the parking queue, with why and when."""
    headers = {**after.to_headers(), PARKED_REASON: reason, PARKED_AT: at.isoformat()}
    return Outgoing.again(message, TO_QUEUE, parking_queue, headers)


def replayed_copy(message: Republishable, fallback_queue: str) -> Outgoing:
    """A parked request back on the fallback queue, its retries started over."""
    progress = RequestProgress.from_headers(message.headers).for_replay()
    return Outgoing.again(message, TO_QUEUE, fallback_queue, progress.to_headers())


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _names(value: object) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(
        v.decode() if isinstance(v, bytes) else v for v in value if isinstance(v, str | bytes)
    )

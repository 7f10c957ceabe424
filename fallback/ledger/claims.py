"""What a claim on a handler call finds, and what the executor may do about it.

A pure function of the row (if any) and the request, so both backends judge alike.
"""

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from txmail.core.errors import TxmailError


class LedgerUnavailable(TxmailError):
    """The ledger's database cannot be reached: no handler may be called (nothing would
    prove the call is not a second one)."""


class CallState(StrEnum):
    CALLING = "calling"  # claimed; the lease says until when
    SUCCEEDED = "succeeded"
    FAILED_TRANSIENTLY = "failed_transiently"  # may be called again at once
    FAILED_PERMANENTLY = "failed_permanently"  # not again, unless replayed


class ClaimVerdict(StrEnum):
    CALL = "call"  # first call, or again after a transient failure or for a replay
    # The last caller's lease ran out with no outcome recorded: it stopped mid-call.
    # Calling again is the one duplicate the ledger cannot rule out.
    CALL_AFTER_LOST_OUTCOME = "call_after_lost_outcome"
    SUCCEEDED = "succeeded"  # do not call: count it as succeeded
    FAILED_PERMANENTLY = "failed_permanently"  # do not call: count it as failed for good
    BUSY = "busy"  # someone else holds a live lease: try the request later


@dataclass(frozen=True)
class CallRow:
    state: CallState
    lease_until: datetime
    replays: int  # of the request that last claimed it


@dataclass(frozen=True)
class Claim:
    idempotency_key: str
    handler: str
    owner: str  # unique per claim: only its owner records a failure
    verdict: ClaimVerdict

    @property
    def granted(self) -> bool:
        return self.verdict in (ClaimVerdict.CALL, ClaimVerdict.CALL_AFTER_LOST_OUTCOME)


def judge_claim(row: CallRow | None, replays: int, now: datetime) -> ClaimVerdict:
    """``replays``: how many times ops replayed the request from the parking queue. A
    permanent failure blocks copies of the request it failed for, but not a later
    replay: ops replay after fixing the cause."""
    if row is None or row.state is CallState.FAILED_TRANSIENTLY:
        return ClaimVerdict.CALL
    if row.state is CallState.SUCCEEDED:
        return ClaimVerdict.SUCCEEDED
    if row.state is CallState.FAILED_PERMANENTLY:
        return ClaimVerdict.CALL if replays > row.replays else ClaimVerdict.FAILED_PERMANENTLY
    if row.lease_until > now:
        return ClaimVerdict.BUSY
    return ClaimVerdict.CALL_AFTER_LOST_OUTCOME


def new_owner() -> str:
    """Which process claimed, for whoever reads the table, and unique per claim."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

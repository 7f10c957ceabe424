"""What the executor needs from a call ledger backend."""

from datetime import datetime, timedelta
from typing import Protocol

from txmail.fallback.ledger.claims import CallState, Claim


class CallLedger(Protocol):
    async def open(self) -> None:
        """Connect, and create or migrate the table."""

    async def claim(
        self, idempotency_key: str, handler: str, replays: int, lease: timedelta
    ) -> Claim:
        """Judge the call's row and, if the call may go ahead, take it for ``lease``:
        atomically, so of several executors claiming at once one at most is granted."""

    async def record(self, claim: Claim, state: CallState) -> None:
        """The outcome of a granted claim. A success is recorded whoever holds the row
        now; a failure only while the claim is still the owner's."""

    async def purge(self, changed_before: datetime, limit: int) -> int:
        """Delete up to ``limit`` rows last changed before then; return how many."""

    async def ping(self) -> bool:
        """Whether the database answers now (for readiness)."""

    async def close(self) -> None: ...

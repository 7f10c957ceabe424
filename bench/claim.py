"""The sweep's claim in Python alone: CPU-µs per claimed message, without a database.

Builds the summaries of DUE due messages as the store holds them (`sent` and
`processed` with Braze's timestamps, half of them registered with a recipient and
variables), then runs what ``SqlStore.claim_due`` runs between its read and its write,
``--claims`` times (default 50), and prints the CPU time per message (min and median).

    python -m bench.claim

For a count that does not swing with the machine's load, count instructions: run it
under callgrind with ``--claims 1`` and with ``--claims 3``, and divide the difference
of the two totals ("Collected") by 2 x DUE:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.claim --claims 1

Not part of CI.
"""

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

from txmail.core import event_loop
from txmail.core.events import Postback, Recipient, SendRegistration
from txmail.workers.health.evaluate import DegradedScopes
from txmail.workers.health.observations import observe
from txmail.workers.health.store import sends_recorded
from txmail.workers.state import Event, Message, PostbackEvent, RegistrationEvent, evolve
from txmail.workers.store.rows import claimed_rows, to_rows
from txmail.workers.timeouts import DeliveryTimeouts

DUE = 1_000
TIMEOUTS = DeliveryTimeouts(timedelta(hours=1))
STARTED = datetime(2026, 1, 1, 12, tzinfo=UTC)
NOW = STARTED + timedelta(hours=3)
CAMPAIGN = "417220e4-5a2a-b634-7f7d-9ec891532368"
HEALTHY = DegradedScopes(frozenset())


def _braze_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.000+00:00")


def _postback(i: int, status: str, at: datetime, *stamped: str) -> PostbackEvent:
    """A postback as Braze sends it: its times written Braze's way."""
    metadata = {name: _braze_time(at) for name in (f"{status}_at", *stamped)}
    metadata |= {"external_send_id": f"order-{i}", "campaign_api_id": CAMPAIGN}
    return PostbackEvent(
        event_id=f"{i:08d}{status}",
        received_at=at + timedelta(seconds=1),
        postback=Postback(dispatch_id=f"dispatch-{i:024d}", status=status, metadata=metadata),
    )


def _registration(i: int, at: datetime) -> RegistrationEvent:
    return RegistrationEvent(
        event_id=f"{i:08d}registration",
        received_at=at,
        registration=SendRegistration(
            external_send_id=f"order-{i}",
            campaign_api_id=CAMPAIGN,
            recipient=Recipient(email=f"customer{i}@example.com", phone="+15005550006"),
            variables={"first_name": "Ada", "order_total": 42.5},
        ),
    )


def due_summaries(count: int) -> list[str]:
    """Summaries of messages sent and processed hours ago, none delivered."""
    summaries = []
    for i in range(count):
        at = STARTED + timedelta(seconds=i)
        events: list[Event] = [
            _postback(i, "sent", at, "enqueued_at", "executed_at"),
            _postback(i, "processed", at),
        ]
        if i % 2:
            events.append(_registration(i, at))
        message, _ = evolve(Message(key=f"send:order-{i}"), events, at)
        (row,), _ = to_rows([(message, None)], TIMEOUTS)
        summaries.append(row.summary)
    return summaries


def claim(summaries: list[str]) -> None:
    """The claim's Python: decide, make the rows and the requests, and the sends' health."""
    _, decided = claimed_rows(summaries, TIMEOUTS, NOW, None, HEALTHY)
    if len(decided) != len(summaries):
        raise RuntimeError(f"decided {len(decided)} of {len(summaries)} due messages")
    sends_recorded(observe((), decided))


async def main(claims: int) -> None:
    summaries = due_summaries(DUE)
    claim(summaries)  # warm: the first call builds what later ones reuse
    took = []
    for _ in range(claims):
        started = time.process_time()
        claim(summaries)
        took.append(time.process_time() - started)
    each = [t / DUE * 1e6 for t in took]
    print(
        f"claim of {DUE}: {min(each):.1f} CPU-µs per message at best, "
        f"median {statistics.median(each):.1f}, over {claims} claims"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=50)
    # As a service runs: the collector tuned (uvloop is idle here).
    event_loop.run(main(parser.parse_args().claims))

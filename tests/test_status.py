"""``txmail status`` on a real SQLite store: what an operator reads, and what a script parses."""

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.factories import postback, registration, tracked
from tests.support.processes import spawn
from txmail.core.events import FALLBACK_ATTEMPT_TYPE, AttemptOutcome, FallbackAttempt
from txmail.workers.status import as_json, describe
from txmail.workers.store import open_store
from txmail.workers.store.protocol import MessageView, TrackedEvent
from txmail.workers.timeouts import DeliveryTimeouts

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def stored(path: Path, events: list[TrackedEvent], wanted: str = "d1") -> MessageView:
    store = await open_store(f"sqlite:///{path}", DeliveryTimeouts(timedelta(minutes=10)))
    try:
        await store.apply(events, NOW)
        message = await store.find(dispatch_id=wanted)
    finally:
        await store.close()
    assert message is not None
    return message


def attempt(outcome: str, detail: str, at: datetime, number: int = 1) -> TrackedEvent:
    """An attempt event as the executor publishes it, arriving at ``at``."""
    published = FallbackAttempt(
        idempotency_key="txm_1",
        dispatch_id="d1",
        external_send_id=None,
        handler="sms",
        attempt=number,
        outcome=AttemptOutcome(outcome),
        detail=detail,
        at=at,
    )
    return tracked(FALLBACK_ATTEMPT_TYPE, published.model_dump(mode="json"), at)


async def test_text_from_outside_cannot_forge_lines_or_escape_codes(tmp_path: Path) -> None:
    forged = "550 no such user\n\x1b[2Jdelivered: all fine\u2028"
    message = await stored(
        tmp_path / "t.db",
        [postback("d1", "bounced", NOW, reason=forged, campaign_api_id="c\x1b[31m")],
    )
    text = describe(message)
    assert "\x1b" not in text
    assert "\u2028" not in text
    assert text.splitlines()[0] == "bounced: 550 no such user\\n\\x1b[2Jdelivered: all fine\\u2028"
    assert "campaign          c\\x1b[31m" in text

    as_script = as_json(message)
    assert "\u2028" not in as_script
    assert "\x1b" not in as_script
    assert json.loads(as_script)["reason"] == forged


async def test_the_timeline_is_in_braze_order_with_the_arrival_as_tie_break(
    tmp_path: Path,
) -> None:
    # Braze's postbacks of one send often reach us together, or out of order.
    def braze(seconds: int) -> str:
        return (NOW - timedelta(minutes=5) + timedelta(seconds=seconds)).isoformat()

    late = NOW + timedelta(seconds=3)
    o1 = {"external_send_id": "o1"}
    events = [
        registration(NOW - timedelta(hours=1), **o1),
        postback("d1", "delivered", NOW, **o1, delivered_at=braze(4)),
        postback("d1", "processed", NOW, **o1, processed_at=braze(2)),
        postback("d1", "sent", late, **o1, sent_at=braze(0)),
        postback("d1", "opened", NOW, **o1),  # no time of Braze's: the arrival
        postback("d1", "clicked", late, **o1, clicked_at="not a time"),
    ]
    message = await stored(tmp_path / "t.db", events)
    order = ["registered", "sent", "processed", "delivered", "opened", "clicked"]
    timeline = describe(message).split("timeline:\n")[1].splitlines()
    assert [line.split()[2] for line in timeline] == order
    assert [e["label"] for e in json.loads(as_json(message))["timeline"]] == order


async def test_the_last_fallback_attempt_says_what_happened_and_why(tmp_path: Path) -> None:
    events = [
        postback("d1", "bounced", NOW, reason="550"),
        attempt(
            "parked",
            "rules[0]: permanent: answered 400: bad number (parked: every remaining handler "
            "failed permanently)",
            NOW + timedelta(seconds=11, milliseconds=500),
            number=2,
        ),
        # Earlier, though its time as text sorts later ("11Z" after "11.5Z").
        attempt(
            "retrying", "rules[0]: transient: timed out after 10s", NOW + timedelta(seconds=11)
        ),
    ]
    message = await stored(tmp_path / "t.db", events)
    assert (
        "  last attempt      sms: parked (attempt 2, 2026-03-01T12:00:11+00:00): rules[0]: "
        "permanent: answered 400: bad number (parked: every remaining handler failed "
        "permanently)"
    ) in describe(message).splitlines()
    last = json.loads(as_json(message))["last_fallback_attempt"]
    assert (last["outcome"], last["attempt"]) == ("parked", 2)
    assert "answered 400: bad number" in last["detail"]


async def test_status_json_stays_parseable_with_debug_logs(tmp_path: Path) -> None:
    # Logs go to stderr: at level debug they must not mix into the data on stdout.
    database = tmp_path / "t.db"
    await stored(database, [postback("d1", "bounced", NOW, reason="550")])
    process = await spawn(
        "status",
        "--json",
        "d1",
        env={
            **os.environ,
            "TXMAIL_DATABASE_URL": f"sqlite:///{database}",
            "TXMAIL_LOG_LEVEL": "debug",
        },
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert json.loads(out)["outcome"] == "bounced"
    assert b'"level": "debug"' in err

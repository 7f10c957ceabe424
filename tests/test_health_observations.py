"""What a batch tells about its sends' health (workers/health/observations.py)."""

from datetime import UTC, datetime, timedelta

from tests.support.factories import postback
from txmail.workers.health.observations import observe

ARRIVED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SENT_AT = ARRIVED - timedelta(seconds=30)


def test_a_postback_with_braze_times_gives_its_send_one_piece() -> None:
    sent = postback("d1", "sent", ARRIVED, external_send_id="s1", sent_at=SENT_AT.isoformat())
    delivered = postback(
        "d1", "delivered", ARRIVED, external_send_id="s1", delivered_at=ARRIVED.isoformat()
    )

    (piece,) = observe([delivered, sent], [])

    assert piece.sent_at == SENT_AT
    assert piece.delivered_at == ARRIVED
    assert piece.lag == timedelta(seconds=30)


def test_postbacks_without_any_braze_time_record_nothing() -> None:
    untimed = [postback("d2", status, ARRIVED) for status in ("sent", "processed", "delivered")]

    assert observe(untimed, []) == []


def test_a_failure_without_braze_time_still_counts_at_its_arrival() -> None:
    (piece,) = observe([postback("d3", "bounced", ARRIVED)], [])

    assert (piece.failure, piece.failed_at) == ("bounced", ARRIVED)

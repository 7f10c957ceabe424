"""The watermark rule with a clock we control: when a deadline may be judged."""

from datetime import UTC, datetime, timedelta

from txmail.core.events import Postback
from txmail.workers.state import PostbackEvent, event_time
from txmail.workers.watermark import WatermarkRule, WorkerProgress, due_by

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=30)
L = timedelta(minutes=2)
RULE = WatermarkRule(skew=S, max_lateness=L, sweep_interval=timedelta(seconds=1))
TIMEOUT = timedelta(minutes=10)


def worker(
    name: str = "w1",
    *,
    applied_until: datetime | None = NOW,
    braze: datetime | None = NOW,
    heard: datetime | None = None,
    heartbeat: datetime = NOW,
    holding: datetime | None = None,
) -> WorkerProgress:
    """A worker caught up to ``applied_until`` that last applied a postback Braze stamped
    ``braze``, heard at ``heard`` (by default: then, as Braze sends them at once)."""
    return WorkerProgress(name, heartbeat, applied_until, braze, heard or braze, holding)


def fires(deadline: datetime, rows: list[WorkerProgress], now: datetime = NOW) -> bool:
    due = due_by(rows, now, RULE)
    return due is not None and deadline <= due


def test_braze_far_behind_while_postbacks_flow_fires_nothing_early() -> None:
    # A burst: postbacks reach txmail 20 minutes after Braze stamped them, txmail keeps
    # up with them. A message sent 11 minutes ago on Braze's clock may well have been
    # delivered 9 minutes ago: that `delivered` is still in front of the ingress.
    burst = [worker(braze=NOW - timedelta(minutes=20), heard=NOW)]
    sent_at = NOW - timedelta(minutes=11)
    assert not fires(sent_at + TIMEOUT, burst)
    # Once the stream has caught up past the deadline (and the skew), it fires.
    assert fires(sent_at + TIMEOUT, [worker(braze=sent_at + TIMEOUT + S)])


def test_braze_slow_to_deliver_while_the_stream_flows_fires_the_skew_late() -> None:
    deadline = NOW - timedelta(seconds=10)
    assert not fires(deadline, [worker(braze=NOW)], NOW)
    later = NOW + S - timedelta(seconds=10)
    assert fires(deadline, [worker(braze=later, heartbeat=later, applied_until=later)], later)


def test_no_postback_at_all_fires_within_the_maximum_lateness() -> None:
    # Braze went silent at NOW; the workers are caught up and keep saying so.
    deadline = NOW + timedelta(minutes=5)

    def at(when: datetime) -> list[WorkerProgress]:
        return [worker(applied_until=when, heartbeat=when, braze=NOW)]

    assert not fires(deadline, at(deadline + L - timedelta(seconds=1)), deadline + L)
    assert fires(deadline, at(deadline + L), deadline + L)
    # A deadline the last postbacks passed by the skew was due before the silence.
    assert fires(NOW - S, at(NOW), NOW)


def test_silence_is_not_txmails_own_backlog() -> None:
    # The workers are ten minutes behind their queue: what they apply arrived long ago,
    # so the last postback heard is old, yet nothing says Braze went quiet.
    behind = NOW - timedelta(minutes=10)
    rows = [worker(applied_until=behind, braze=behind - timedelta(minutes=5), heard=behind)]
    assert due_by(rows, NOW, RULE) == behind - timedelta(minutes=5) - S


def test_a_forged_future_timestamp_does_not_move_the_watermark_past_the_arrival() -> None:
    raw = {
        "dispatch_id": "d1",
        "status": "delivered",
        "metadata": {"delivered_at": "2999-01-01T00:00:00+00:00"},
    }
    forged = PostbackEvent(event_id="e", received_at=NOW, postback=Postback.model_validate(raw))
    assert event_time(forged) == NOW
    due = due_by([worker(braze=event_time(forged))], NOW, RULE)
    assert due == NOW - S


def test_event_time_is_the_status_own_time_in_utc_or_none() -> None:
    def postback(status: str, **metadata: object) -> PostbackEvent:
        raw = {"dispatch_id": "d1", "status": status, "metadata": metadata}
        return PostbackEvent(event_id="e", received_at=NOW, postback=Postback.model_validate(raw))

    assert event_time(postback("bounced", bounced_at="2026-03-01T12:59:00+01:00")) == NOW - (
        timedelta(minutes=1)
    )
    assert event_time(postback("bounced", sent_at="2026-03-01T11:00:00+00:00")) is None
    assert event_time(postback("sent", sent_at="yesterday")) is None
    assert event_time(postback("deferred", deferred_at=42)) is None
    assert event_time(postback("sent", sent_at="0001-01-01T00:00:00+01:00")) is None


def test_several_workers_the_slowest_bounds_and_a_dead_one_stops_counting() -> None:
    behind = NOW - timedelta(minutes=1)
    dead_since = NOW - RULE.stale_after - timedelta(seconds=1)
    rows = [
        worker("fast"),
        worker("draining", applied_until=behind, braze=behind),
        worker("dead", applied_until=NOW - timedelta(hours=1), heartbeat=dead_since),
    ]
    # Just stale: the dead worker's events went back to the queue, the others cover them.
    assert due_by(rows, NOW, RULE) == behind
    alive = [*rows[:2], worker("dead", applied_until=NOW - timedelta(hours=1), heartbeat=NOW)]
    assert due_by(alive, NOW, RULE) == NOW - timedelta(hours=1)
    # A dead worker's Braze times still count: what it applied is applied.
    quiet = [worker("w", braze=behind), worker("dead", braze=NOW, heartbeat=dead_since)]
    assert due_by(quiet, NOW, RULE) == NOW - S


def test_nothing_is_due_before_every_live_worker_knows_its_backlog() -> None:
    assert due_by([], NOW, RULE) is None
    assert due_by([worker(), worker("new", applied_until=None)], NOW, RULE) is None


def test_a_deployment_that_never_heard_a_postback_fires_within_the_maximum_lateness() -> None:
    rows = [worker(braze=None)]
    assert due_by(rows, NOW, RULE) == NOW - L


def test_a_delivered_one_worker_holds_keeps_its_deadline_from_another_workers_progress() -> None:
    # Ten minutes behind Braze: B applies postbacks stamped up to BEHIND while A still
    # holds, in its inbox, a `delivered` stamped a minute earlier that arrived a moment
    # ago. The arrival bound (when that `delivered` arrived) is far after both.
    behind = NOW - timedelta(minutes=10)
    delivered_at = behind - timedelta(minutes=1)
    deadline = delivered_at + timedelta(seconds=1)
    a = worker("a", applied_until=NOW - timedelta(seconds=1), braze=behind, holding=delivered_at)
    b = worker("b", braze=behind + timedelta(minutes=1), heard=NOW)
    assert not fires(deadline, [a, b])
    assert not fires(delivered_at, [a, b])  # stamped at the deadline itself: in time
    assert fires(delivered_at - timedelta(microseconds=1), [a, b])
    # Once A applied it, B's progress alone bounds the deadline again.
    applied = worker("a", applied_until=NOW, braze=delivered_at)
    assert fires(deadline, [applied, b])


def test_a_dead_workers_held_postbacks_stop_counting_with_its_row() -> None:
    dead_since = NOW - RULE.stale_after - timedelta(seconds=1)
    held = NOW - timedelta(minutes=5)
    rows = [worker("w"), worker("dead", heartbeat=dead_since, holding=held)]
    # Its deliveries went back to the queue: whoever takes them holds them now.
    assert due_by(rows, NOW, RULE) == NOW - S

"""How the console words and draws things: masks, gaps, percentiles, the chart."""

from datetime import UTC, datetime, timedelta

from txmail.workers.console.chart import latency_chart
from txmail.workers.console.masking import masked_email, masked_phone
from txmail.workers.console.overview import LatencyBucket, percentile
from txmail.workers.console.timeline import gap_words


def test_recipients_are_masked() -> None:
    assert masked_email("ada@example.com") == "a***@example.com"
    assert masked_email("a@b.example") == "a***@b.example"
    assert masked_phone("+15005550006") == "+1500***0006"
    assert masked_phone("+4930123") == "+49***23"


def test_gaps_are_told_in_the_largest_units_that_matter() -> None:
    assert gap_words(None) == ""
    assert gap_words(timedelta(milliseconds=18)) == "+18 ms"
    assert gap_words(timedelta(seconds=4)) == "+4 s"
    assert gap_words(timedelta(minutes=2, seconds=3)) == "+2 min 3 s"
    assert gap_words(timedelta(hours=1, minutes=5, seconds=9)) == "+1 h 5 min"
    assert gap_words(timedelta(days=2)) == "+48 h"


def test_percentiles_are_values_that_were_measured() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95)) == (50.0, 95.0)


def test_an_hour_without_deliveries_breaks_the_chart_line() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    buckets = [
        LatencyBucket(
            start=start + timedelta(hours=i),
            deliveries=0 if value is None else 1,
            p50_seconds=value,
            p95_seconds=value,
        )
        for i, value in enumerate([1.0, 2.0, None, 4.0] + [None] * 20)
    ]
    chart = latency_chart(buckets)
    p50 = chart.lines[0]
    assert [c[0] for c in p50.path.split()] == ["M", "L", "M"]
    assert len(p50.points) == 3
    assert [t.label for t in chart.y_ticks] == ["0 s", "2.5 s", "5 s"]
    assert not chart.empty
    assert latency_chart([]).empty

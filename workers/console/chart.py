"""Braze's delivery latency as a small SVG line chart, drawn on the server: no script,
no library, nothing fetched. p50 is a solid line with round marks, p95 a dashed line
with square marks, so the two differ in more than color."""

from dataclasses import dataclass

from txmail.workers.console.overview import LatencyBucket

WIDTH, HEIGHT = 600, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 10, 24  # margins for the axes' labels


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True)
class Line:
    name: str
    points: list[Point]  # the marks
    path: str  # SVG path data: an hour without deliveries breaks the line


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    lines: list[Line]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    empty: bool


def latency_chart(buckets: list[LatencyBucket]) -> Chart:
    top = max((b.p95_seconds or 0 for b in buckets), default=0) or 1.0
    scale = _nice(top)

    def x(i: int) -> float:
        return LEFT + i * (WIDTH - LEFT - RIGHT) / max(1, len(buckets) - 1)

    def y(seconds: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - seconds / scale)

    lines = []
    for name in ("p50", "p95"):
        values = [getattr(b, f"{name}_seconds") for b in buckets]
        points = [Point(x(i), y(v)) for i, v in enumerate(values) if v is not None]
        path = " ".join(
            f"{'L' if i and values[i - 1] is not None else 'M'}{x(i):.1f},{y(v):.1f}"
            for i, v in enumerate(values)
            if v is not None
        )
        lines.append(Line(name, points, path))
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        lines=lines,
        y_ticks=[Tick(y(scale * f), _seconds(scale * f)) for f in (0, 0.5, 1)],
        x_ticks=[
            Tick(x(i), b.start.strftime("%H:00")) for i, b in enumerate(buckets) if i % 6 == 0
        ],
        empty=not any(b.deliveries for b in buckets),
    )


def _nice(top: float) -> float:
    """A round number at or above ``top`` for the axis: 1, 2, 5, 10, 20, ..."""
    nice = 1.0
    while nice < top:
        for factor in (2, 2.5, 2):
            nice *= factor
            if nice >= top:
                break
    return nice


def _seconds(value: float) -> str:
    return f"{value:g} s" if value < 120 else f"{value / 60:g} min"

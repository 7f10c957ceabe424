"""``txmail status --health``: Braze's health as the deployment judged it, for a person.

Campaign ids and reasons come from postbacks: every line is escaped like the rest of
``txmail status``.
"""

from datetime import datetime, timedelta

from txmail.core.durations import format_duration
from txmail.core.terminal import printable
from txmail.workers.health.store import HealthReport, ScopeReport


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _seconds(value: int | float | None) -> str:
    return "-" if value is None else format_duration(timedelta(seconds=value))


def _rate(value: int | float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _scope_line(name: str, scope: ScopeReport) -> str:
    f = scope.figures
    since = f" since {_time(scope.since)}" if scope.since else ""
    return (
        f"  {name:<24} {scope.health.value}{since}: {f.get('sends', 0)} sends, "
        f"p95 {_seconds(f.get('p95_latency_seconds'))}, "
        f"timed out {_rate(f.get('timeout_rate'))}, "
        f"bounced or aborted {_rate(f.get('failure_rate'))}, "
        f"postback lag p95 {_seconds(f.get('p95_lag_seconds'))}"
    )


def describe_health(report: HealthReport) -> str:
    if report.overall is None:
        lines = ["Braze's health: not judged yet (no worker has run since the tables were made)"]
    else:
        lines = [f"Braze's health, judged {_time(report.overall.evaluated_at)}:"]
        lines.append(_scope_line("overall", report.overall))
    lines += [_scope_line(s.campaign_api_id or "-", s) for s in report.campaigns]
    if report.learned_timeouts:
        lines.append("learned delivery timeouts:")
        lines += [
            f"  {t.campaign_api_id or '(no campaign)':<24} "
            f"{_seconds(t.timeout_seconds)} from {t.sends} delivered sends, "
            f"learned {_time(t.learned_at)}"
            for t in report.learned_timeouts
        ]
    if report.recent_changes:
        lines.append("recent changes:")
        lines += [f"  {_time(c.at)}  {c.reason}" for c in report.recent_changes]
    return "\n".join(printable(line) for line in lines)

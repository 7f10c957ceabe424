"""Reading what a txmail process exposes on ``/metrics``, with Prometheus's own parser,
and what the Grafana dashboard in the repository queries."""

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards" / "txmail.json"
# A metric name in a PromQL expression: one of ours, or the process's own.
METRIC_NAME = re.compile(r"\b(?:txmail|process|python)_[a-z_]+\b")

Labels = frozenset[tuple[str, str]]
# Every sample: its name (with _total, _bucket, _count ...) and labels, to its value.
Samples = dict[tuple[str, Labels], float]


async def exposition(url: str) -> str:
    """What ``url``/metrics serves."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def scrape(url: str) -> Samples:
    """The samples ``url``/metrics serves, as Prometheus reads them."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await exposition(url))
        for sample in family.samples
    }


def families(text: str) -> set[str]:
    """The metric families of an exposition (a counter's without ``_total``)."""
    return {family.name for family in text_string_to_metric_families(text)}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the process does not expose it (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def _expressions(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for key, child in node.items():
            if key == "expr" and isinstance(child, str):
                yield child
            else:
                yield from _expressions(child)
    elif isinstance(node, list):
        for child in node:
            yield from _expressions(child)


def dashboard_queries() -> set[str]:
    """Every metric name a query of the dashboard names."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {name for expr in _expressions(dashboard) for name in METRIC_NAME.findall(expr)}

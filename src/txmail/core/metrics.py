"""Prometheus metrics: the shared ones (publishing, the build), and ``/metrics``.

Each layer defines its metrics in one module, on a registry of its own
(``txmail.ingress.metrics``, ``txmail.workers.metrics``, ``txmail.fallback.metrics``);
a process serves the registries of the parts it runs, so one process is one scrape
target and ``txmail run`` serves everything. The README's Metrics section lists them.
Label values are bounded: statuses, outcomes, triggers, configured handler names;
never a dispatch id or a free-text reason.
"""

from collections.abc import Sequence
from importlib.metadata import version

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)

# Publishes, confirms, HTTP answers: most take milliseconds, a broker in trouble seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SHARED = CollectorRegistry()

BUILD_INFO = Gauge(
    "txmail_build_info", "Always 1; the txmail version running.", ["version"], registry=SHARED
)
BUILD_INFO.labels(version("txmail")).set(1)

PUBLISH_CONFIRM_SECONDS = Histogram(
    "txmail_publish_confirm_seconds",
    "Time from publishing a batch of messages to RabbitMQ's last confirm of it.",
    buckets=LATENCY_BUCKETS,
    registry=SHARED,
)


def exposed(*layers: CollectorRegistry) -> list[CollectorRegistry]:
    """What a process serves: the Python process's own (CPU, memory, open files), the
    shared metrics, and those of the layers it runs."""
    return [REGISTRY, SHARED, *layers]


def add_metrics_route(app: web.Application, registries: Sequence[CollectorRegistry]) -> None:
    async def metrics(request: web.Request) -> web.Response:
        # Registries hold distinct names, so their expositions concatenate into one.
        body = b"".join(generate_latest(registry) for registry in registries)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)

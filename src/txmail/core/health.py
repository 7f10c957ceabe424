"""``/healthz`` and ``/readyz``: the answers every txmail process gives its orchestrator.

A process is ready while it can do its job: connected, consuming, its store answering.
Each part says what keeps it from being ready; the 503 body lists all of it.
"""

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry

from txmail.core.http import json_error, json_errors
from txmail.core.metrics import add_metrics_route

# What keeps a part from being ready, as sentences for an operator; empty: ready.
Readiness = Callable[[], Awaitable[list[str]]]

READINESS: web.AppKey[Readiness] = web.AppKey("readiness")


async def all_ready(parts: Sequence[Readiness]) -> list[str]:
    """Every part's problems, each said once (parts may share a store)."""
    return list(dict.fromkeys([problem for part in parts for problem in await part()]))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[READINESS]()
    if problems:
        return json_error(503, "not_ready", "; ".join(problems), problems=problems)
    return web.json_response({"status": "ready"})


def add_health_routes(app: web.Application, readiness: Readiness) -> None:
    app[READINESS] = readiness
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def create_health_app(
    readiness: Readiness, metrics: Sequence[CollectorRegistry]
) -> web.Application:
    """The health and metrics port of a process without an HTTP API of its own (worker,
    executor)."""
    app = web.Application(middlewares=[json_errors])
    add_health_routes(app, readiness)
    add_metrics_route(app, metrics)
    return app

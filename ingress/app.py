"""The ingress application: routes, and the broker's life cycle."""

from collections.abc import AsyncIterator, Sequence

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from txmail.core.broker import Broker
from txmail.core.http import json_error, json_errors
from txmail.core.metrics import add_metrics_route, exposed
from txmail.core.openapi import add_openapi_route
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.ingress import metrics
from txmail.ingress.context import BROKER, GATE, SETTINGS
from txmail.ingress.overload import PublishGate
from txmail.ingress.postbacks import receive_postbacks
from txmail.ingress.sends import register_send

log = structlog.get_logger(__name__)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[BROKER].is_ready:
        return web.json_response({"status": "ready"})
    return json_error(503, "not_ready", "not connected to RabbitMQ")


def create_app(
    settings: Settings, metrics_served: Sequence[CollectorRegistry] | None = None
) -> web.Application:
    """The ingress; its ``/metrics`` serves ``metrics_served``, by default the ingress
    process's own."""
    app = web.Application(middlewares=[json_errors], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[BROKER] = Broker(settings.amqp_url, Topology(settings.namespace), settings.publish_timeout)
    app[GATE] = PublishGate(app[BROKER], settings.max_publishes_in_flight)
    app.router.add_post("/postbacks", receive_postbacks)
    app.router.add_post("/v1/sends", register_send)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_metrics_route(app, exposed(metrics.REGISTRY) if metrics_served is None else metrics_served)
    add_openapi_route(app, "txmail.ingress")
    app.cleanup_ctx.append(_broker_lifecycle)
    if settings.postback_token is None:
        log.warning(
            "TXMAIL_POSTBACK_TOKEN is not set: POST /postbacks accepts anyone's postbacks; "
            "set a token and put it in Braze's postback URL"
        )
    if settings.api_token is None:
        log.warning("TXMAIL_API_TOKEN is not set: POST /v1/sends accepts anyone's registrations")
    return app


async def _broker_lifecycle(app: web.Application) -> AsyncIterator[None]:
    broker = app[BROKER]
    broker.start()
    yield
    await broker.close()

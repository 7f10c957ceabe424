"""The read side over HTTP: one message by dispatch id or by the sender's own id, and
the operator's console (workers/console/) with its JSON endpoints.

Messages hold personal data (recipients, variables, postback bodies): everything but
the health checks needs a token or a signed-in session when a token is set, and with
none set the API listens on this machine only, unless told otherwise.
"""

from collections.abc import Sequence
from functools import partial

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry

from txmail.core.health import Readiness, add_health_routes, all_ready
from txmail.core.http import json_error, json_errors
from txmail.core.metrics import add_metrics_route, exposed
from txmail.core.openapi import add_openapi_route
from txmail.core.parked import ParkedFallbacks
from txmail.core.settings import Settings
from txmail.workers.console import add_console
from txmail.workers.console.access import NO_TOKENS, ApiTokens, access_required
from txmail.workers.store.protocol import MessageView, NotMigrated, Store, StoreUnavailable

log = structlog.get_logger(__name__)

STORE = web.AppKey("store", Store)


def _found(message: MessageView | None, what: str) -> web.Response:
    if message is None:
        return json_error(404, "not_found", f"no message is known for {what}")
    return web.json_response(text=message.model_dump_json())


async def message_by_dispatch_id(request: web.Request) -> web.Response:
    dispatch_id = request.match_info["dispatch_id"]
    message = await request.app[STORE].find(dispatch_id=dispatch_id)
    return _found(message, f"dispatch_id {dispatch_id!r}")


async def message_by_external_send_id(request: web.Request) -> web.Response:
    external_send_id = request.query.get("external_send_id", "")
    if not external_send_id:
        return json_error(
            400, "bad_request", "give ?external_send_id=..., or use /v1/messages/{dispatch_id}"
        )
    message = await request.app[STORE].find(external_send_id=external_send_id)
    return _found(message, f"external_send_id {external_send_id!r}")


async def braze_health(request: web.Request) -> web.Response:
    report = await request.app[STORE].health.report()
    return web.json_response(text=report.model_dump_json())


def _store_answers(store: Store) -> Readiness:
    async def not_ready() -> list[str]:
        try:
            await store.ping()
        except StoreUnavailable as error:
            return [f"store unavailable: {error}"]
        return []

    return not_ready


@web.middleware
async def store_unavailable_is_503(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotMigrated as error:
        return json_error(503, "not_migrated", str(error))
    except StoreUnavailable as error:
        return json_error(503, "store_unavailable", str(error))


def api_tokens(settings: Settings) -> ApiTokens:
    """TXMAIL_API_TOKEN and the read-only TXMAIL_API_READ_TOKEN, those that are set."""
    return ApiTokens(replay=settings.api_token, read=settings.api_read_token)


def api_host(settings: Settings) -> str:
    """Where the API listens: TXMAIL_API_HOST, else every interface when a token guards
    it and this machine only when none does (logged as a warning)."""
    if api_tokens(settings).guarded:
        return settings.api_host or "0.0.0.0"  # noqa: S104 -- a token guards every read.
    unguarded = "TXMAIL_API_TOKEN and TXMAIL_API_READ_TOKEN are not set: the message API"
    if settings.api_host is None:
        log.warning(f"{unguarded} listens on 127.0.0.1 only", port=settings.api_port)
        return "127.0.0.1"
    log.warning(
        f"{unguarded} answers anyone who reaches TXMAIL_API_HOST",
        host=settings.api_host,
        port=settings.api_port,
    )
    return settings.api_host


def create_api_app(
    store: Store,
    tokens: ApiTokens = NO_TOKENS,
    *parts: Readiness,
    parked: ParkedFallbacks | None = None,
    metrics_served: Sequence[CollectorRegistry] | None = None,
) -> web.Application:
    """The API over an open store; whoever opened the store closes it. With ``tokens``,
    every path but the health checks, the contract, ``/metrics`` and the sign-in page
    needs one of them (or a session). ``/readyz`` asks the store, and ``parts`` running
    in the same process (``txmail run``). ``parked``: what the console may do with
    parked fallbacks. ``/metrics`` serves ``metrics_served``, by default the API
    process's own. ``GET /v1/health/braze`` is Braze's health as the workers judged it."""
    app = web.Application(middlewares=[json_errors, access_required, store_unavailable_is_503])
    app[STORE] = store
    app.router.add_get("/v1/messages/{dispatch_id}", message_by_dispatch_id)
    app.router.add_get("/v1/messages", message_by_external_send_id)
    app.router.add_get("/v1/health/braze", braze_health)
    add_console(app, store, tokens, parked)
    add_health_routes(app, partial(all_ready, [_store_answers(store), *parts]))
    add_metrics_route(app, exposed() if metrics_served is None else metrics_served)
    add_openapi_route(app, "txmail.workers")
    return app

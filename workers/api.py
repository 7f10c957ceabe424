"""The read side over HTTP: one message by dispatch id or by the sender's own id."""

from functools import partial

from aiohttp import web
from aiohttp.typedefs import Handler

from txmail.health import Readiness, add_health_routes, all_ready
from txmail.http import json_error, json_errors
from workers.store.protocol import MessageView, Store, StoreUnavailable

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
    except StoreUnavailable as error:
        return json_error(503, "store_unavailable", str(error))


def create_api_app(store: Store, *parts: Readiness) -> web.Application:
    """The API over an open store; whoever opened the store closes it. ``/readyz`` asks
    the store, and ``parts`` running in the same process (``txmail run``)."""
    app = web.Application(middlewares=[json_errors, store_unavailable_is_503])
    app[STORE] = store
    app.router.add_get("/v1/messages/{dispatch_id}", message_by_dispatch_id)
    app.router.add_get("/v1/messages", message_by_external_send_id)
    add_health_routes(app, partial(all_ready, [_store_answers(store), *parts]))
    return app

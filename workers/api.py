"""The read side over HTTP: one message by dispatch id or by the sender's own id."""

from aiohttp import web
from aiohttp.typedefs import Handler

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


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[STORE].ping()
    except StoreUnavailable as error:
        return json_error(503, "not_ready", str(error))
    return web.json_response({"status": "ready"})


@web.middleware
async def store_unavailable_is_503(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreUnavailable as error:
        return json_error(503, "store_unavailable", str(error))


def create_api_app(store: Store) -> web.Application:
    """The API over an open store; whoever opened the store closes it."""
    app = web.Application(middlewares=[json_errors, store_unavailable_is_503])
    app[STORE] = store
    app.router.add_get("/v1/messages/{dispatch_id}", message_by_dispatch_id)
    app.router.add_get("/v1/messages", message_by_external_send_id)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app

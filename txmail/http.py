"""What every txmail HTTP server shares: JSON errors, and serving until SIGTERM."""

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

log = structlog.get_logger(__name__)


def json_error(status: int, error: str, message: str, **extra: Any) -> web.Response:
    """The one shape of every error body: ``{"error": code, "message": text, ...}``."""
    return web.json_response({"error": error, "message": message, **extra}, status=status)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text errors (404, 405, 413, ...) into JSON bodies; never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = json_error(
            error.status, _CODES.get(error.status, "http_error"), error.reason or error.text or ""
        )
        for name in ("Allow", "WWW-Authenticate"):
            if name in error.headers:
                response.headers[name] = error.headers[name]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", path=request.path)
        return json_error(500, "internal_error", "txmail failed to handle this request")


async def serve_until_stopped(
    app: web.Application, host: str, port: int, shutdown_timeout: float, stop: asyncio.Event
) -> None:
    """Serve ``app`` until ``stop`` is set (see ``txmail.stopping.stop_on_signals``), then
    stop accepting, let requests in flight finish (at most ``shutdown_timeout`` seconds)
    and run the app's cleanup."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("listening", host=host, port=port)
        await stop.wait()
        log.info("stopping: finishing requests in flight")
    finally:
        await runner.cleanup()
        log.info("stopped")

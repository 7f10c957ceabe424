"""What every txmail HTTP server shares: JSON errors, starting (or saying why it cannot),
and serving until SIGTERM."""

import asyncio
import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from txmail.errors import CannotStart

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


@asynccontextmanager
async def serving(
    app: web.Application, host: str, port: int, shutdown_timeout: float = 10.0
) -> AsyncIterator[int]:
    """Serve ``app`` for the block, and yield the port it listens on (``port`` 0 picks a
    free one). Raises CannotStart at once when it cannot listen: a process that cannot
    do its job must exit, not linger. On exit, requests in flight get at most
    ``shutdown_timeout`` seconds, then the app's cleanup runs."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            raise CannotStart(_why_not_listening(error, host, port)) from None
        listening_on: int = runner.addresses[0][1]
        log.info("listening", host=host, port=listening_on)
        yield listening_on
    finally:
        await runner.cleanup()


def _why_not_listening(error: OSError, host: str, port: int) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {port} is already in use"
    if error.errno == errno.EACCES:
        return f"port {port} needs privileges this process does not have"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


async def serve_until_stopped(
    app: web.Application, host: str, port: int, shutdown_timeout: float, stop: asyncio.Event
) -> None:
    """Serve ``app`` until ``stop`` is set (see ``txmail.stopping.stop_on_signals``), then
    stop accepting, let requests in flight finish (at most ``shutdown_timeout`` seconds)
    and run the app's cleanup."""
    async with serving(app, host, port, shutdown_timeout):
        await stop.wait()
        log.info("stopping: finishing requests in flight")
    log.info("stopped")

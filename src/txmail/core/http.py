"""What every txmail HTTP server shares: JSON errors, bounded connections and requests,
starting (or saying why it cannot), and serving until SIGTERM."""

import asyncio
import errno
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from txmail.core.errors import CannotStart
from txmail.core.settings import Settings

log = structlog.get_logger(__name__)

# What every response says in `Server`: not aiohttp's version, which would tell a
# scanner which of its advisories to try.
SERVER_NAME = "txmail"


def json_error(status: int, error: str, message: str, **extra: Any) -> web.Response:
    """The one shape of every error body: ``{"error": code, "message": text, ...}``."""
    return web.json_response({"error": error, "message": message, **extra}, status=status)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    431: "headers_too_large",
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
    except ConnectionError:
        # The client hung up before its request was read: nothing is wrong on our side,
        # and nobody is left to answer.
        log.info("client closed the connection mid-request", path=request.path)
        return json_error(400, "bad_request", "the connection closed before the request was read")
    except Exception:
        log.exception("unhandled error", path=request.path)
        return json_error(500, "internal_error", "txmail failed to handle this request")


class RequestBodyTimeout(web.HTTPRequestTimeout):
    """Raised from ``request.read()`` when the body took longer than TXMAIL_HTTP_BODY_TIMEOUT."""


def _raw_json_response(status: int, reason: str, error: str, message: str) -> bytes:
    """A whole HTTP response, for answering on a connection no handler is reading."""
    body = json.dumps({"error": error, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\n"
        f"Content-Type: application/json; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return (head + "\r\n").encode() + body


class _BoundedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 connection, with the limits aiohttp does not have.

    - a connection over TXMAIL_HTTP_MAX_CONNECTIONS is answered 503 and closed;
    - a request's headers must be complete within the header timeout of its first byte
      (of the connection opening, for the first request), else 408 and closed;
    - a body must be complete within the body timeout of its headers: ``request.read()``
      then raises RequestBodyTimeout (a 408);
    - a request aiohttp's parser refuses is answered in JSON, and logged briefly, at
      info, without the raw bytes aiohttp would log (a body, a ``?token=``).

    It reads a few attributes aiohttp's RequestHandler keeps (``_messages``, the queue
    of parsed requests, to see when a request's headers are complete; whether one is
    in progress or the connection closing); tests/test_http.py pins each limit.
    """

    def __init__(self, manager: "_BoundedServer", *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._header_timeout = settings.http_header_timeout.total_seconds()
        self._body_timeout = settings.http_body_timeout.total_seconds()
        self._header_deadline: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._server.admits_another():
            self._answer_and_close(
                503, "Service Unavailable", "too_many_connections", "too many open connections"
            )
            return
        self._start_header_deadline()

    def data_received(self, data: bytes) -> None:
        parsed = len(self._messages)
        super().data_received(data)
        new = list(itertools.islice(self._messages, parsed, None))
        if new:
            self._cancel_header_deadline()
            payload = new[-1][1]
            if not payload.is_eof():
                self._start_body_deadline(payload)
        elif data and self._header_deadline is None and self._idle():
            self._start_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_deadline()
        self._cancel_body_deadline()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (400) or handle (500): JSON."""
        if status >= 500:
            log.error("request failed", exc_info=exc)
            code, text = "internal_error", "txmail failed to handle this request"
        else:
            # Neither the exception's message nor the request: aiohttp puts raw bytes in both.
            log.info("malformed HTTP request refused", status=status, error=type(exc).__name__)
            code = _CODES.get(status, "bad_request")
            text = "the request is not valid HTTP/1.1"
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent on this connection")
        response = json_error(status, code, text)
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), RequestBodyTimeout):
            # aiohttp reading the rest of a timed-out body before it closes: expected.
            log.info("connection closed: request body too slow")
            return
        super().log_exception(*args, **kw)

    def _idle(self) -> bool:
        """No request is being received, handled or answered: new bytes begin the next.

        (Bytes of a pipelined request that arrive while one is handled start no
        deadline: aiohttp's keep-alive timer bounds them once the response is out.)"""
        receiving_body = self._body is not None and not self._body.is_eof()
        closing = self._close or self._force_close
        return not (receiving_body or closing or self._request_in_progress or self._messages)

    def _start_header_deadline(self) -> None:
        # A request has begun (or the connection just opened): the header timeout, not
        # aiohttp's idle (keep-alive) timer, decides how long it may take. keep_alive()
        # cancels that timer; aiohttp starts it again after the response.
        self.keep_alive(True)
        self._header_deadline = self._loop.call_later(self._header_timeout, self._headers_late)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        log.info("connection closed: request headers too slow", timeout=self._header_timeout)
        self._answer_and_close(
            408,
            "Request Timeout",
            "request_timeout",
            f"the request headers took longer than {self._header_timeout:g}s",
        )

    def _start_body_deadline(self, payload: StreamReader) -> None:
        self._cancel_body_deadline()
        self._body = payload
        self._body_deadline = self._loop.call_later(self._body_timeout, self._body_late)

    def _cancel_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _body_late(self) -> None:
        self._body_deadline = None
        if self._body is not None and not self._body.is_eof():
            # The reason is what json_errors puts in the answer's "message".
            self._body.set_exception(
                RequestBodyTimeout(
                    reason=f"the request body took longer than {self._body_timeout:g}s"
                )
            )

    def _answer_and_close(self, status: int, reason: str, error: str, message: str) -> None:
        if self.transport is not None:
            self.transport.write(_raw_json_response(status, reason, error, message))
        self.force_close()  # closes once the answer is written


class _BoundedServer(web.Server):
    """aiohttp's server, making _BoundedRequestHandler connections."""

    def __init__(self, handler: Any, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._settings = settings
        self._refusing = False

    def admits_another(self) -> bool:
        """Whether the connection just made fits under TXMAIL_HTTP_MAX_CONNECTIONS.

        Logged when refusing starts and when it ends, not once per connection: a flood
        of connections should not become a flood of log lines."""
        limit = self._settings.http_max_connections
        admits = len(self.connections) <= limit
        if not admits and not self._refusing:
            log.warning("too many open connections: refusing new ones with 503", limit=limit)
        elif admits and self._refusing:
            log.info("accepting connections again", limit=limit)
        self._refusing = not admits
        return admits

    def __call__(self) -> RequestHandler:
        # What aiohttp's own __call__ does, with the class and the settings of txmail.
        return _BoundedRequestHandler(
            self, loop=self._loop, settings=self._settings, **self._kwargs
        )


class _BoundedAppRunner(web.AppRunner):
    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings

    async def _make_server(self) -> web.Server:
        standard = await super()._make_server()  # runs the app's start-up
        return _BoundedServer(
            standard.request_handler,
            settings=self._settings,
            request_factory=standard.request_factory,
            handler_cancellation=standard.handler_cancellation,
            **self._kwargs,
        )


async def _name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


def app_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner every txmail HTTP server uses: the TXMAIL_HTTP_* limits, JSON errors
    even for requests aiohttp cannot parse, and ``Server: txmail``."""
    app.on_response_prepare.append(_name_the_server)
    return _BoundedAppRunner(
        app,
        settings,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout.total_seconds(),
        keepalive_timeout=settings.http_keepalive_timeout.total_seconds(),
    )


@asynccontextmanager
async def serving(
    app: web.Application, host: str, port: int, settings: Settings, reuse_port: bool = False
) -> AsyncIterator[int]:
    """Serve ``app`` for the block, and yield the port it listens on (``port`` 0 picks a
    free one); with ``reuse_port``, alongside other processes that do the same. Raises
    CannotStart at once when it cannot listen: a process that cannot do its job must
    exit, not linger. On exit, requests in flight get at most TXMAIL_SHUTDOWN_TIMEOUT,
    then the app's cleanup runs."""
    runner = app_runner(app, settings)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        except OSError as error:
            raise CannotStart(why_not_listening(error, host, port)) from None
        listening_on: int = runner.addresses[0][1]
        log.info("listening", host=host, port=listening_on)
        yield listening_on
    finally:
        await runner.cleanup()


def why_not_listening(error: OSError, host: str, port: int) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {port} is already in use"
    if error.errno == errno.EACCES:
        return f"port {port} needs privileges this process does not have"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


async def serve_until_stopped(
    app: web.Application,
    host: str,
    port: int,
    settings: Settings,
    stop: asyncio.Event,
    reuse_port: bool = False,
) -> None:
    """Serve ``app`` until ``stop`` is set (see ``txmail.core.stopping.stop_on_signals``), then
    stop accepting, let requests in flight finish (at most TXMAIL_SHUTDOWN_TIMEOUT)
    and run the app's cleanup."""
    async with serving(app, host, port, settings, reuse_port):
        await stop.wait()
        log.info("stopping: finishing requests in flight")
    log.info("stopped")

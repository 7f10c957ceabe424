"""What several built-in handlers share: the JSON description of a fallback, the
reading of an HTTP answer as success, transient or permanent failure, and failures
told in words an operator reads in a log or in ``txmail status``."""

from importlib.metadata import version
from typing import Any

import aiohttp

from txmail.core.events import FallbackRequest
from txmail.fallback.handler import PermanentFailure, TransientFailure

# Names txmail's traffic for whoever receives it (in User-Agent, or a mail's X-Mailer).
USER_AGENT = f"txmail/{version('txmail')}"

# Errors that mean "could not talk to the other side", never "it said no".
HTTP_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)

# Worth retrying: rate limits and "too early" are temporary by definition.
_TRANSIENT_CLIENT_STATUSES = frozenset({408, 425, 429})
# How much of an error answer's body a failure quotes.
_BODY_QUOTED = 200


def fallback_payload(request: FallbackRequest, handler: str) -> dict[str, Any]:
    """The fallback as JSON, for receivers that are programs (webhooks, queues).

    It holds nothing that changes between retries, so every retry sends the same body.
    """
    return {
        "type": "email.fallback",
        "timestamp": request.decided_at.isoformat(),
        "data": {**request.model_dump(mode="json"), "handler": handler},
    }


async def check_http_response(response: aiohttp.ClientResponse, what: str) -> None:
    """Return on 2xx; otherwise raise, transient for 5xx, 408, 425, 429."""
    if 200 <= response.status < 300:
        return
    body = " ".join((await response.text(errors="replace")).split())
    quoted = body[:_BODY_QUOTED] + ("..." if len(body) > _BODY_QUOTED else "")
    detail = f"{what} answered {response.status} {response.reason or ''}".strip()
    detail += f": {quoted}" if quoted else ""
    if response.status >= 500 or response.status in _TRANSIENT_CLIENT_STATUSES:
        raise TransientFailure(detail)
    if 300 <= response.status < 400:
        raise PermanentFailure(f"{detail} (redirects are not followed: configure the final URL)")
    raise PermanentFailure(detail)

"""Shared-secret tokens on HTTP requests: where a caller may put one, and how it is checked.

The ingress (postbacks, send registrations) and the message API use the same rules.
"""

import base64
import hmac
from collections.abc import Sequence

from aiohttp import web
from pydantic import SecretStr

from txmail.core.http import json_error


def _raw(text: str) -> bytes:
    # aiohttp hands over a header's non-UTF-8 bytes as lone surrogates, and a query string
    # may hold some too: such a token is simply wrong, never an error.
    return text.encode("utf-8", "surrogatepass")


def presented_tokens(request: web.Request, *, in_query: bool) -> list[bytes]:
    """Every token the request carries: a bearer token, a Basic auth password, and with
    ``in_query`` the ``token`` query parameter (Braze's postback URL field can only hold
    a URL, so ``https://host/postbacks?token=...``)."""
    tokens = []
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        tokens.append(_raw(value.strip()))
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except ValueError:  # not base64, or not even ASCII
            decoded = b""
        tokens.append(decoded.partition(b":")[2])
    if in_query and "token" in request.query:
        tokens.append(_raw(request.query["token"]))
    return tokens


def token_accepted(accepted: Sequence[SecretStr], request: web.Request, *, in_query: bool) -> bool:
    """Whether the request carries one of the ``accepted`` tokens."""
    presented = presented_tokens(request, in_query=in_query)
    # compare_digest on every pair, so timing says nothing about which part matched.
    return any(
        [
            hmac.compare_digest(token.get_secret_value().encode(), candidate)
            for token in accepted
            for candidate in presented
        ]
    )


def unauthorized(realm: str, *, in_query: bool) -> web.Response:
    places = "as a bearer token, as the Basic auth password, or as the 'token' query parameter"
    if not in_query:
        places = "as a bearer token or as the Basic auth password"
    response = json_error(401, "unauthorized", f"missing or wrong token: send it {places}")
    response.headers["WWW-Authenticate"] = f'Bearer realm="{realm}", Basic realm="{realm}"'
    return response

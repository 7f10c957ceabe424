"""Who may post: a shared token (bearer, Basic password or ``?token=``) and source networks."""

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Sequence

from aiohttp import web
from pydantic import SecretStr

from txmail.http import json_error
from txmail.settings import IPNetwork


def presented_tokens(request: web.Request) -> list[str]:
    """Every place a caller can put the token: Braze's postback URL field can only hold
    a URL, so ``https://host/postbacks?token=...`` or ``https://user:token@host/...``."""
    tokens = []
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        tokens.append(value.strip())
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        tokens.append(decoded.partition(":")[2])
    if "token" in request.query:
        tokens.append(request.query["token"])
    return tokens


def token_matches(expected: str, request: web.Request) -> bool:
    wanted = expected.encode()
    # compare_digest on every candidate, so timing says nothing about which part matched.
    return any([hmac.compare_digest(wanted, token.encode()) for token in presented_tokens(request)])


def refusal(
    request: web.Request, token: SecretStr | None, networks: Sequence[IPNetwork], realm: str
) -> web.Response | None:
    """The response refusing this request (403 or 401), or None when it may go on."""
    if not source_allowed(request, networks):
        return forbidden_source(request)
    if token is not None and not token_matches(token.get_secret_value(), request):
        return unauthorized(realm)
    return None


def unauthorized(realm: str) -> web.Response:
    response = json_error(
        401,
        "unauthorized",
        "missing or wrong token: send it as a bearer token, as the Basic auth password, "
        "or as the 'token' query parameter",
    )
    response.headers["WWW-Authenticate"] = f'Bearer realm="{realm}", Basic realm="{realm}"'
    return response


def source_allowed(request: web.Request, networks: Sequence[IPNetwork]) -> bool:
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def forbidden_source(request: web.Request) -> web.Response:
    return json_error(
        403, "forbidden", f"source address {request.remote} is not in TXMAIL_ALLOWED_NETWORKS"
    )

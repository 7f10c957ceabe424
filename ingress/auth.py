"""Who may post: a shared token (see txmail.tokens, ``?token=`` included) and source networks."""

import ipaddress
from collections.abc import Sequence

from aiohttp import web
from pydantic import SecretStr

from txmail.core.http import json_error
from txmail.core.settings import IPNetwork
from txmail.core.tokens import token_accepted, unauthorized


def refusal(
    request: web.Request, token: SecretStr | None, networks: Sequence[IPNetwork], realm: str
) -> web.Response | None:
    """The response refusing this request (403 or 401), or None when it may go on."""
    if not source_allowed(request, networks):
        return forbidden_source(request)
    if token is not None and not token_accepted([token], request, in_query=True):
        return unauthorized(realm, in_query=True)
    return None


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

"""Who may read and who may replay: tokens for scripts, a signed session for people.

With ``TXMAIL_API_TOKEN`` or ``TXMAIL_API_READ_TOKEN`` set, every path but the health
checks, the sign-in page and its static files needs one of them: scripts send it as a
bearer token (or Basic password), people type it once into the sign-in form, which
sets a session cookie (HttpOnly, SameSite=Strict, 12 hours). The cookie is signed
with a key derived from the token it was opened with, so it holds no secret, needs
no server-side state (any API replica accepts it), and changing the token ends every
session opened with the old one. Only ``TXMAIL_API_TOKEN`` may replay.

Replays and sign-outs are POSTs that a page of another site cannot forge: the browser
sends no SameSite=Strict cookie with them, an ``Origin`` of another host is refused,
and a form must carry the session's CSRF token (which another site cannot read).
With no token set, everything is open (on 127.0.0.1 only, unless told otherwise) and
a banner says so; forms still carry a CSRF token, keyed per process.
"""

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import SecretStr

from txmail.core.tokens import presented_tokens, unauthorized
from txmail.workers.console.numbers import whole_number

SESSION_COOKIE = "txmail_session"
SESSION_LIFETIME = 12 * 3600  # seconds: one shift on call
CSRF_HEADER = "X-Txmail-Csrf"
SIGN_IN = "/sign-in"
# The health checks, the contract (nothing secret in it), the metrics (counts under
# bounded labels, nothing personal: Prometheus scrapes without a token), the way in.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics", SIGN_IN})
STATIC = "/static/"


class Role(StrEnum):
    READ = "read"  # TXMAIL_API_READ_TOKEN: sees everything, changes nothing
    REPLAY = "replay"  # TXMAIL_API_TOKEN: also replays parked fallbacks


@dataclass(frozen=True)
class ApiTokens:
    replay: SecretStr | None = None  # TXMAIL_API_TOKEN
    read: SecretStr | None = None  # TXMAIL_API_READ_TOKEN

    @property
    def guarded(self) -> bool:
        return self.replay is not None or self.read is not None

    def by_role(self) -> dict[Role, SecretStr]:
        return {
            role: token
            for role, token in ((Role.REPLAY, self.replay), (Role.READ, self.read))
            if token is not None
        }

    def role_of(self, candidates: list[bytes]) -> Role | None:
        """The role of the first token that matches one of the candidates."""
        # compare_digest on every pair, so timing says nothing about which part matched.
        matches = [
            (role, hmac.compare_digest(token.get_secret_value().encode(), candidate))
            for role, token in self.by_role().items()
            for candidate in candidates
        ]
        return next((role for role, matched in matches if matched), None)


NO_TOKENS = ApiTokens()


@dataclass(frozen=True)
class Access:
    """What the request may do, and how it proved it."""

    role: Role
    csrf: str  # what its forms must carry back ("" for a token in a header)
    by_header: bool  # a script's token: no browser sends that by itself
    open: bool  # no token is configured at all


TOKENS = web.AppKey("tokens", ApiTokens)
OPEN_KEY = web.AppKey("open_csrf_key", bytes)


ACCESS = web.RequestKey("access", Access)


def _session_key(token: SecretStr) -> bytes:
    return hmac.new(token.get_secret_value().encode(), b"txmail console session", "sha256").digest()


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def new_session(tokens: ApiTokens, role: Role) -> str:
    """A cookie value: role, expiry and a nonce, signed with the role's token."""
    expires = int(time.time()) + SESSION_LIFETIME
    payload = f"{role.value}.{expires}.{secrets.token_hex(16)}"
    return f"{payload}.{_mac(_session_key(tokens.by_role()[role]), payload)}"


def session_access(tokens: ApiTokens, cookie: str) -> Access | None:
    """The access a session cookie grants, or None: forged, expired, or its token changed."""
    role_text, _, rest = cookie.partition(".")
    expires, _, rest = rest.partition(".")
    nonce, _, mac = rest.partition(".")
    role = next((r for r in Role if r.value == role_text), None)
    token = None if role is None else tokens.by_role().get(role)
    expiry = whole_number(expires)
    if role is None or token is None or expiry is None or expiry < time.time():
        return None
    key = _session_key(token)
    if not hmac.compare_digest(_mac(key, f"{role_text}.{expires}.{nonce}"), mac):
        return None
    return Access(role, _mac(key, f"csrf.{nonce}"), by_header=False, open=False)


def access_of(request: web.Request) -> Access:
    return request[ACCESS]


def _to_sign_in(request: web.Request) -> web.HTTPSeeOther:
    wanted = request.path_qs
    return web.HTTPSeeOther(
        SIGN_IN if wanted == "/" else f"{SIGN_IN}?next={quote(wanted, safe='')}"
    )


@web.middleware
async def access_required(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Attach the request's Access, or answer 401 (API) / send to the sign-in page."""
    tokens = request.app[TOKENS]
    if not tokens.guarded:
        csrf = _mac(request.app[OPEN_KEY], "csrf.open")
        request[ACCESS] = Access(Role.REPLAY, csrf, by_header=False, open=True)
        return await handler(request)
    role = tokens.role_of(presented_tokens(request, in_query=False))
    if role is not None:
        request[ACCESS] = Access(role, "", by_header=True, open=False)
        return await handler(request)
    session = session_access(tokens, request.cookies.get(SESSION_COOKIE, ""))
    if session is not None:
        request[ACCESS] = session
        return await handler(request)
    if request.path in OPEN_PATHS or request.path.startswith(STATIC):
        return await handler(request)
    if request.path.startswith("/v1/") or "text/html" not in request.headers.get("Accept", ""):
        return unauthorized("messages", in_query=False)  # a script: it gets JSON
    raise _to_sign_in(request)  # a browser


def cross_site_problem(request: web.Request, csrf: str | None) -> str | None:
    """Why this state-changing request may have been forged by another site, or None."""
    if not same_origin(request):
        return f"a request from {request.headers['Origin']} may not change anything here"
    access = access_of(request)
    if access.by_header:
        return None
    if csrf is None or not hmac.compare_digest(csrf, access.csrf):
        return "the form is out of date: reload the page and try again"
    return None


def same_origin(request: web.Request) -> bool:
    """False for a request a page of another site sent (browsers say where from)."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


def set_session(response: web.StreamResponse, request: web.Request, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_LIFETIME,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def clear_session(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def add_access(app: web.Application, tokens: ApiTokens) -> None:
    app[TOKENS] = tokens
    app[OPEN_KEY] = secrets.token_bytes(32)

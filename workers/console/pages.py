"""The console's pages: server-rendered HTML from the same reads as its JSON endpoints."""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jinja2
from aiohttp import web

from txmail.core.errors import BrokerUnavailable
from txmail.core.events import Trigger, utc_now
from txmail.core.parked import ParkedListing
from txmail.workers.console.access import (
    ACCESS,
    SIGN_IN,
    Role,
    access_of,
    clear_session,
    cross_site_problem,
    new_session,
    same_origin,
    set_session,
)
from txmail.workers.console.access import TOKENS as TOKENS_KEY
from txmail.workers.console.chart import latency_chart
from txmail.workers.console.keys import STORE
from txmail.workers.console.masking import masked_email, masked_phone
from txmail.workers.console.numbers import whole_number
from txmail.workers.console.overview import overview
from txmail.workers.console.routes import (
    FAILURES_SHOWN,
    NO_PARKING,
    PARKED_SHOWN,
    BadQuery,
    failure_filters,
    not_found,
    parked_count,
    parked_operations,
    recent_failures,
)
from txmail.workers.console.timeline import OUTCOME_WORDS, gap_words, steps
from txmail.workers.status import find_either

REFRESH_SECONDS = 10
FORM_TYPE = "application/x-www-form-urlencoded"  # what the pages' forms send
NOT_A_FORM = f"This is not a form the console sends ({FORM_TYPE}, UTF-8)."
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
TEMPLATES.globals.update(outcome_words=OUTCOME_WORDS, gap_words=gap_words)
# Pages hold personal data and load nothing from elsewhere: say so to the browser.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    text = TEMPLATES.get_template(template).render(
        {"access": request.get(ACCESS), "refresh": None, "nav": None, **context}
    )
    return web.Response(text=text, status=status, content_type="text/html", headers=HEADERS)


async def now_page(request: web.Request) -> web.Response:
    now = utc_now()
    data = await overview(request.app[STORE], now)
    parked = await parked_count(request)
    return render(
        request,
        "now.html",
        title="Now",
        nav="now",
        refresh=REFRESH_SECONDS,
        now=now,
        data=data,
        chart=latency_chart(data["latency"]),
        parked_total=parked if isinstance(parked, int) else None,
        parked_problem=parked if isinstance(parked, str) else None,
    )


async def message_page(request: web.Request) -> web.Response:
    wanted = request.query.get("id", "").strip()
    message = await find_either(request.app[STORE], wanted) if wanted else None
    recipient: list[str] = []
    variables: dict[str, Any] = {}
    if message is not None and message.registration is not None:
        registration = message.registration.registration
        if registration.recipient.email:
            recipient.append(masked_email(registration.recipient.email))
        if registration.recipient.phone:
            recipient.append(masked_phone(registration.recipient.phone))
        variables = registration.variables
    return render(
        request,
        "message.html",
        status=404 if wanted and message is None else 200,
        title=f"Message {wanted}" if wanted else "Find a message",
        nav="messages",
        wanted=wanted,
        message=message,
        steps=steps(message) if message else [],
        recipient=recipient,
        variables=variables,
    )


async def failures_page(request: web.Request) -> web.Response:
    context: dict[str, Any] = {"failures": [], "problem": None}
    try:
        context["campaign"], context["trigger"] = failure_filters(request)
        context["failures"] = await recent_failures(request, FAILURES_SHOWN)
    except BadQuery as error:
        context.update(campaign=None, trigger=None, problem=str(error))
    return render(
        request,
        "failures.html",
        status=400 if context["problem"] else 200,
        title="Recent failures",
        nav="failures",
        refresh=REFRESH_SECONDS,
        triggers=[t.value for t in Trigger],
        limit=FAILURES_SHOWN,
        **context,
    )


async def parked_page(request: web.Request) -> web.Response:
    listing: ParkedListing | None = None
    problem: str | None = NO_PARKING
    if (parked := parked_operations(request)) is not None:
        try:
            listing, problem = await parked.listing(PARKED_SHOWN), None
        except BrokerUnavailable as error:
            problem = f"the parking queue cannot be read now: {error}"
    return render(
        request,
        "parked.html",
        title="Parked fallbacks",
        nav="parked",
        listing=listing,
        problem=problem,
        can_replay=access_of(request).role is Role.REPLAY,
        replayed=whole_number(request.query.get("replayed")),
        missing=request.query.get("missing"),
    )


def refused(request: web.Request, status: int, problem: str, back: str) -> web.Response:
    return render(
        request, "refused.html", status=status, title="Not done", problem=problem, back=back
    )


async def replay_form(request: web.Request) -> web.StreamResponse:
    form = await posted_form(request)
    if form is None:
        return refused(request, 400, NOT_A_FORM, "/parked")
    if access_of(request).role is not Role.REPLAY:
        return refused(
            request, 403, "Replaying needs TXMAIL_API_TOKEN, not the read token.", "/parked"
        )
    if problem := cross_site_problem(request, form.get("csrf")):
        return refused(request, 403, problem, "/parked")
    parked = parked_operations(request)
    if parked is None:
        return refused(request, 503, NO_PARKING, "/parked")
    one = form.get("id")
    wanted = {one} if one else None
    if wanted is None and form.get("all") != "1":
        return refused(request, 400, "Say which request to replay, or all of them.", "/parked")
    try:
        replayed = await parked.replay(wanted)
    except BrokerUnavailable as error:
        return refused(request, 503, f"Nothing replayed: {error}", "/parked")
    outcome = {"replayed": str(len(replayed))}
    if missing := not_found(wanted, replayed):
        outcome["missing"] = ", ".join(missing)
    raise web.HTTPSeeOther(f"/parked?{urlencode(outcome)}")


async def posted_form(request: web.Request) -> dict[str, str] | None:
    """The fields of a form as the pages post them (urlencoded UTF-8; the first of a
    name repeated), or None for a body that is not one. Not aiohttp's ``post()``, which
    fails on a multipart body without its boundary or on bytes not in their charset."""
    if request.content_type != FORM_TYPE:
        return None
    try:
        text = (await request.read()).decode()
    except UnicodeDecodeError:
        return None
    fields: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def _next_page(wanted: str | None) -> str:
    """Where to go after signing in: a path of this site only, never another site."""
    # "//host" and "/\\host" are other sites to a browser; "//[" is no URL at all.
    if wanted is None or "\\" in wanted or not wanted.startswith("/"):
        return "/"
    try:
        return "/" if urlsplit(wanted).netloc else wanted
    except ValueError:
        return "/"


async def sign_in_page(request: web.Request) -> web.Response:
    if not request.app[TOKENS_KEY].guarded:
        raise web.HTTPSeeOther("/")  # nothing to sign in to
    return render(
        request,
        "sign_in.html",
        title="Sign in",
        next=_next_page(request.query.get("next")),
        problem=None,
    )


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await posted_form(request)
    if form is None:
        return render(
            request, "sign_in.html", status=400, title="Sign in", next="/", problem=NOT_A_FORM
        )
    next_page = _next_page(form.get("next"))
    if not same_origin(request):
        return render(
            request,
            "sign_in.html",
            status=403,
            title="Sign in",
            next=next_page,
            problem="A sign-in from another site is refused.",
        )
    token = form.get("token")
    tokens = request.app[TOKENS_KEY]
    role = tokens.role_of([token.encode()]) if token else None
    if role is None:
        return render(
            request,
            "sign_in.html",
            status=401,
            title="Sign in",
            next=next_page,
            problem="That token is not TXMAIL_API_TOKEN or TXMAIL_API_READ_TOKEN.",
        )
    response = web.HTTPSeeOther(next_page)
    set_session(response, request, new_session(tokens, role))
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    form = await posted_form(request)
    if form is None:
        return refused(request, 400, NOT_A_FORM, "/")
    if problem := cross_site_problem(request, form.get("csrf")):
        return refused(request, 403, problem, "/")
    response = web.HTTPSeeOther(SIGN_IN)
    clear_session(response)
    raise response


def add_pages(app: web.Application) -> None:
    app.router.add_get("/", now_page)
    app.router.add_get("/messages", message_page)
    app.router.add_get("/failures", failures_page)
    app.router.add_get("/parked", parked_page)
    app.router.add_post("/parked/replay", replay_form)
    app.router.add_get(SIGN_IN, sign_in_page)
    app.router.add_post(SIGN_IN, sign_in)
    app.router.add_post("/sign-out", sign_out)
    for name, content_type in STATIC_FILES.items():
        app.router.add_get(f"/static/{name}", _static(name, content_type))


# The only files the pages load, served from the package (not a directory: nothing
# else in it, nor what a link in it points to, can be asked for).
STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}


def _static(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    body = (Path(__file__).parent / "static" / name).read_bytes()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8")

    return serve

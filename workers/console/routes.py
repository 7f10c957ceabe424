"""The console's JSON endpoints: what each part of its pages shows, for scripts and
dashboards, read by the same functions the pages use."""

from typing import Any, Literal

import pydantic
import pydantic_core
from aiohttp import web

from txmail.core.errors import BrokerUnavailable
from txmail.core.events import Trigger, utc_now
from txmail.core.http import json_error
from txmail.core.parked import ParkedFallback, ParkedFallbacks
from txmail.workers.console.access import CSRF_HEADER, Role, access_of, cross_site_problem
from txmail.workers.console.keys import PARKED, STORE
from txmail.workers.console.numbers import whole_number
from txmail.workers.console.overview import PARTS, overview
from txmail.workers.store.protocol import FailureSummary, Store

FAILURES_SHOWN = 50
MAX_FAILURES = 500
PARKED_SHOWN = 100
MAX_PARKED = 1000
NO_PARKING = "this process cannot see the parked fallbacks"


class BadQuery(ValueError):
    """A query parameter that makes no sense: a 400 with this message."""


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(body=pydantic_core.to_json(value), status=status)


def bounded(request: web.Request, name: str, default: int, most: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    number = whole_number(text)
    if number is None or not 1 <= number <= most:
        raise BadQuery(f"{name} must be a whole number from 1 to {most}")
    return number


def failure_filters(request: web.Request) -> tuple[str | None, str | None]:
    """The campaign and trigger to filter failures by; empty means any."""
    campaign = request.query.get("campaign_api_id") or None
    trigger = request.query.get("trigger") or None
    if trigger is not None and trigger not in {t.value for t in Trigger}:
        raise BadQuery(f"trigger must be one of {', '.join(t.value for t in Trigger)}")
    return campaign, trigger


async def recent_failures(request: web.Request, limit: int) -> list[FailureSummary]:
    campaign, trigger = failure_filters(request)
    store: Store = request.app[STORE]
    return await store.recent_failures(limit, campaign_api_id=campaign, trigger=trigger)


async def overview_json(request: web.Request) -> web.Response:
    return _json(await overview(request.app[STORE], utc_now()))


async def stats_json(request: web.Request) -> web.Response:
    part = PARTS.get(request.match_info["part"])
    if part is None:
        return json_error(404, "not_found", f"known parts: {', '.join(PARTS)}")
    return _json(await part(request.app[STORE], utc_now()))


async def failures_json(request: web.Request) -> web.Response:
    try:
        failures = await recent_failures(
            request, bounded(request, "limit", FAILURES_SHOWN, MAX_FAILURES)
        )
    except BadQuery as error:
        return json_error(400, "bad_request", str(error))
    return _json({"failures": failures})


def parked_operations(request: web.Request) -> ParkedFallbacks | None:
    return request.app.get(PARKED)


async def parked_count(request: web.Request) -> int | str:
    """How many fallback requests are parked, or why that cannot be known now."""
    parked = parked_operations(request)
    if parked is None:
        return NO_PARKING
    try:
        return await parked.count()
    except BrokerUnavailable as error:
        return str(error)


async def parked_count_json(request: web.Request) -> web.Response:
    count = await parked_count(request)
    if isinstance(count, str):
        return json_error(503, "unavailable", count)
    return _json({"total": count})


async def parked_json(request: web.Request) -> web.Response:
    parked = parked_operations(request)
    if parked is None:
        return json_error(503, "unavailable", NO_PARKING)
    try:
        limit = bounded(request, "limit", PARKED_SHOWN, MAX_PARKED)
    except BadQuery as error:
        return json_error(400, "bad_request", str(error))
    try:
        listing = await parked.listing(limit)
    except BrokerUnavailable as error:
        return json_error(503, "broker_unavailable", str(error))
    return _json({"total": listing.total, "requests": listing.requests})


class ReplaySome(pydantic.BaseModel):
    """The parked requests with these ids: message ids or idempotency keys."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    ids: list[str] = pydantic.Field(min_length=1)


class ReplayAll(pydantic.BaseModel):
    """Every parked request."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    all: Literal[True]

    @pydantic.field_validator("all", mode="before")
    @classmethod
    def _true_not_one(cls, value: object) -> object:
        # A Literal[True] matches 1 and 1.0 as well: they equal True in Python.
        if value is not True:
            raise ValueError("all must be true")
        return value


# What POST /v1/parked/replay takes: one or the other, nothing more (the document's
# ReplaySome and ReplayAll are these models' schemas).
REPLAY_ASKED: pydantic.TypeAdapter[ReplaySome | ReplayAll] = pydantic.TypeAdapter(
    ReplaySome | ReplayAll
)


def replay_refusal(request: web.Request, csrf: str | None) -> web.Response | None:
    """403 for a reader, or for what may be another site's forgery; else None."""
    if access_of(request).role is not Role.REPLAY:
        return json_error(403, "forbidden", "replaying needs TXMAIL_API_TOKEN, not the read token")
    if problem := cross_site_problem(request, csrf):
        return json_error(403, "forbidden", problem)
    return None


async def replay_json(request: web.Request) -> web.Response:
    """``{"ids": [...]}`` or ``{"all": true}``, as ``txmail dlq replay ID... | --all``."""
    if refusal := replay_refusal(request, request.headers.get(CSRF_HEADER)):
        return refusal
    parked = parked_operations(request)
    if parked is None:
        return json_error(503, "unavailable", NO_PARKING)
    try:
        asked = REPLAY_ASKED.validate_json(await request.read())
    except pydantic.ValidationError:
        return json_error(
            400, "bad_request", 'send {"ids": ["<id or idempotency key>", ...]} or {"all": true}'
        )
    wanted = set(asked.ids) if isinstance(asked, ReplaySome) else None
    try:
        replayed = await parked.replay(wanted)
    except BrokerUnavailable as error:
        return json_error(503, "broker_unavailable", str(error))
    return _json({"replayed": replayed, "not_found": not_found(wanted, replayed)})


def not_found(wanted: set[str] | None, replayed: list[ParkedFallback]) -> list[str]:
    found = set().union(*(r.ids for r in replayed))
    return sorted((wanted or set()) - found)


def add_json_routes(app: web.Application) -> None:
    app.router.add_get("/v1/overview", overview_json)
    app.router.add_get("/v1/stats/{part}", stats_json)
    app.router.add_get("/v1/failures", failures_json)
    app.router.add_get("/v1/parked", parked_json)
    app.router.add_get("/v1/parked/count", parked_count_json)
    app.router.add_post("/v1/parked/replay", replay_json)

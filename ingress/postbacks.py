"""``POST /postbacks``: Braze's transactional status postbacks onto the events exchange."""

import json
from typing import Any

import orjson
import structlog
from aiohttp import web
from pydantic import ValidationError

from txmail.core.broker import Outgoing
from txmail.core.errors import BrokerUnavailable
from txmail.core.events import POSTBACK_TYPE, Postback, event_id, postback_routing_key, utc_now
from txmail.ingress.auth import refusal
from txmail.ingress.bad_request import (
    BadRequest,
    broker_unavailable,
    parse_json,
    validation_details,
)
from txmail.ingress.context import BROKER, GATE, SETTINGS
from txmail.ingress.metrics import count_accepted, count_not_confirmed, count_unread

log = structlog.get_logger(__name__)


def parse_postbacks(body: bytes, max_events: int) -> list[tuple[Postback, dict[str, Any]]]:
    """Validate a body holding one postback object or an array of them.

    Returns each postback with the raw object it came from (what is published, unchanged).
    Raises BadRequest for the whole request at the first kind of problem, listing every
    invalid item, so one bad item in a batch publishes nothing.
    """
    payload = parse_json(body)
    items = payload if isinstance(payload, list) else [payload]
    if not isinstance(payload, (list, dict)):
        raise BadRequest(
            400, "wrong_type", f"expected a JSON object or array, got {type(payload).__name__}"
        )
    if not items:
        raise BadRequest(400, "empty_array", "the array holds no postbacks")
    if len(items) > max_events:
        raise BadRequest(
            413,
            "too_many_postbacks",
            f"{len(items)} postbacks in one request; at most {max_events} are accepted",
        )
    parsed, details = [], []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            details.append({"index": index, "field": None, "message": "not a JSON object"})
            continue
        try:
            parsed.append((Postback.model_validate(item), item))
        except ValidationError as error:
            details.extend(validation_details(error, index))
    if details:
        raise BadRequest(422, "invalid_postback", "postback failed validation", details)
    return parsed


def compact_json(raw: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(raw)
    except orjson.JSONEncodeError:  # an integer past 64 bits, which the stdlib read
        return json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()


def postback_message(postback: Postback, raw: dict[str, Any], received_at: str) -> Outgoing:
    return Outgoing(
        routing_key=postback_routing_key(postback.status),
        body=compact_json(raw),
        message_id=event_id(raw),
        type=POSTBACK_TYPE,
        headers={"received_at": received_at},
    )


async def receive_postbacks(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if refused := refusal(request, settings.postback_token, settings.allowed_networks, "postbacks"):
        count_unread(refused.status)
        return refused
    gate = request.app[GATE]
    # Before parsing: refusing must cost next to nothing when there is too much to do.
    if overloaded := gate.refusal():
        log.debug("postbacks refused: overloaded")
        count_unread(overloaded.status)
        return overloaded
    try:
        postbacks = parse_postbacks(await request.read(), settings.max_events_per_request)
    except BadRequest as bad:
        log.info("postback rejected", error=bad.error, reason=bad.message)
        count_unread(bad.status)
        return bad.response()
    received_at = utc_now().isoformat()
    outgoing = [postback_message(postback, raw, received_at) for postback, raw in postbacks]
    try:
        with gate.holding(len(outgoing)):
            await request.app[BROKER].publish(outgoing)
    except BrokerUnavailable as error:
        for postback, _ in postbacks:
            count_not_confirmed(postback.status)
            log.error(
                "postback not accepted: broker did not confirm",
                dispatch_id=postback.dispatch_id,
                external_send_id=postback.external_send_id,
                error=str(error),
            )
        return broker_unavailable("postbacks")
    for (postback, _), message in zip(postbacks, outgoing, strict=True):
        count_accepted(postback.status)
        # No bound logger per event: at thousands of postbacks a second its cost shows.
        (log.debug if postback.is_known_status else log.warning)(
            "postback accepted"
            if postback.is_known_status
            else "postback with an undocumented status accepted",
            dispatch_id=postback.dispatch_id,
            external_send_id=postback.external_send_id,
            event_id=message.message_id,
            status=postback.status,
        )
    return web.json_response(
        {"accepted": len(outgoing), "event_ids": [m.message_id for m in outgoing]}, status=202
    )

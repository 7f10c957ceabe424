"""``POST /v1/sends``: an internal app registers a send, saying who it is for.

A postback never names the recipient, so the app that asked Braze to send tells txmail
who to reach if the email fails: the registration travels as an event like a postback.
"""

from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from txmail.core.broker import Outgoing
from txmail.core.errors import BrokerUnavailable
from txmail.core.events import (
    SEND_REGISTERED_ROUTING_KEY,
    SEND_REGISTRATION_TYPE,
    SendRegistration,
    canonical_json,
    event_id,
    utc_now,
)
from txmail.ingress.auth import refusal
from txmail.ingress.bad_request import (
    BadRequest,
    broker_unavailable,
    parse_json,
    validation_details,
)
from txmail.ingress.context import BROKER, GATE, SETTINGS
from txmail.ingress.metrics import count_registration

log = structlog.get_logger(__name__)


def parse_registration(body: bytes) -> tuple[SendRegistration, dict[str, Any]]:
    """The registration and the JSON object to publish for it."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise BadRequest(400, "wrong_type", "expected one JSON object describing the send")
    try:
        registration = SendRegistration.model_validate(payload)
        return registration, registration.to_wire()
    except ValidationError as error:
        raise BadRequest(
            422, "invalid_send", "send registration failed validation", validation_details(error)
        ) from None


def registration_message(wire: dict[str, Any]) -> Outgoing:
    return Outgoing(
        routing_key=SEND_REGISTERED_ROUTING_KEY,
        body=canonical_json(wire),
        message_id=event_id(wire),
        type=SEND_REGISTRATION_TYPE,
        headers={"received_at": utc_now().isoformat()},
    )


async def register_send(request: web.Request) -> web.Response:
    answer = await _register(request)
    count_registration(answer.status)
    return answer


async def _register(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if refused := refusal(request, settings.api_token, settings.allowed_networks, "sends"):
        return refused
    gate = request.app[GATE]
    if overloaded := gate.refusal():  # before parsing, as for postbacks
        log.debug("send registration refused: overloaded")
        return overloaded
    try:
        registration, wire = parse_registration(await request.read())
    except BadRequest as bad:
        log.info("send registration rejected", error=bad.error, reason=bad.message)
        return bad.response()
    message = registration_message(wire)
    bound = log.bind(external_send_id=registration.external_send_id, event_id=message.message_id)
    try:
        with gate.holding(1):
            await request.app[BROKER].publish([message])
    except BrokerUnavailable as error:
        bound.error("send registration not accepted: broker did not confirm", error=str(error))
        return broker_unavailable("send registration")
    bound.debug("send registered")
    return web.json_response({"accepted": 1, "event_id": message.message_id}, status=202)

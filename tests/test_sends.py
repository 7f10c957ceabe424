"""POST /v1/sends: internal apps register who a send is for; it travels like a postback."""

import json
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support.amqp import drain, queue_depth
from tests.support.ingress_server import running_ingress
from txmail.core.events import SendRegistration
from txmail.core.settings import Settings
from txmail.core.topology import Topology

SEND = {
    "external_send_id": "order-1234",
    "campaign_api_id": "417220e4-5a2a-b634-7f7d-9ec891532368",
    "recipient": {"email": "ada@example.com", "phone": "+15005550006"},
    "variables": {"first_name": "Ada", "order_total": 42.5},
    "delivery_timeout": "2m",
}


async def test_a_registration_is_published_on_the_tracker_queue(
    settings: Settings, amqp_url: str
) -> None:
    async with running_ingress(settings) as client:
        response = await client.post("/v1/sends", json=SEND)
        assert response.status == 202
        answer = await response.json()

    [message] = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 1)
    assert message.routing_key == "send.registered"
    assert message.type == "send_registration"
    assert message.message_id == answer["event_id"]
    assert message.delivery_mode == 2
    assert SendRegistration.model_validate_json(message.body) == SendRegistration.model_validate(
        SEND
    )
    assert json.loads(message.body)["delivery_timeout"] == "2m"


async def test_the_same_registration_twice_has_one_event_id(settings: Settings) -> None:
    async with running_ingress(settings) as client:
        first = await (await client.post("/v1/sends", json=SEND)).json()
        second = await (await client.post("/v1/sends", json=dict(reversed(SEND.items())))).json()
    assert first["event_id"] == second["event_id"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ([SEND], 400, None),
        ({**SEND, "external_send_id": ""}, 422, "external_send_id"),
        ({k: v for k, v in SEND.items() if k != "external_send_id"}, 422, "external_send_id"),
        ({**SEND, "recipient": {"phone": "555-1234"}}, 422, "recipient.phone"),
        ({**SEND, "recipient": {"email": "not an address"}}, 422, "recipient.email"),
        # Two addresses in one: a relay would send to both.
        ({**SEND, "recipient": {"email": "postmaster,ada@example.com"}}, 422, "recipient.email"),
        ({**SEND, "recipient": {"email": "ada@example.com;eve@x.org"}}, 422, "recipient.email"),
        ({**SEND, "recipient": {"email": "Ada<ada@example.com>"}}, 422, "recipient.email"),
        ({**SEND, "recipient": {"fax": "+15005550006"}}, 422, "recipient.fax"),
        ({**SEND, "delivery_timeout": "10"}, 422, "delivery_timeout"),
        ({**SEND, "delivery_timeout": "0s"}, 422, "delivery_timeout"),
        # Above zero, but "0s" on the wire (millisecond resolution): the worker would
        # refuse what the ingress answered 202 for.
        ({**SEND, "delivery_timeout": "0.0004s"}, 422, "delivery_timeout"),
        # Too long for any clock: a clear 422, not a 500 from an overflow.
        ({**SEND, "delivery_timeout": "99999999999d"}, 422, "delivery_timeout"),
        ({**SEND, "variables": {"nested": {"a": 1}}}, 422, "variables.nested"),
        ({**SEND, "surprise": True}, 422, "surprise"),
        ({**SEND, "external_send_id": "order\u0000"}, 422, "external_send_id"),
        # JSON has no NaN or Infinity: kept, they would come back from the store as null.
        ({**SEND, "variables": {"total": float("nan")}}, 422, "variables.total"),
        ({**SEND, "variables": {"total": float("inf")}}, 422, "variables.total"),
        ({**SEND, "campaign_api_id": "c\u0000"}, 422, "campaign_api_id"),
    ],
)
async def test_bad_registrations_are_refused_and_publish_nothing(
    settings: Settings, amqp_url: str, body: Any, status: int, field: str | None
) -> None:
    async with running_ingress(settings) as client:
        response = await client.post("/v1/sends", json=body)
        assert response.status == status
        payload = await response.json()
    if field is not None:
        assert field in [d["field"].split(".str")[0] for d in payload["details"]]
    assert await queue_depth(amqp_url, Topology(settings.namespace).tracker_queue) == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"external_send_id": "o", "variables": {"name": "\xed\xa0\x80"}}',
        b'{"external_send_id": "o", "variables": {"\xed\xb0\x80": "x"}}',
        '{"external_send_id": "o", "variables": {"\ud800": "x"}}'.encode(
            "utf-16-le", "surrogatepass"
        ),
    ],
)
async def test_a_lone_surrogate_is_refused_as_invalid_json(
    settings: Settings, amqp_url: str, body: bytes
) -> None:
    async with running_ingress(settings) as client:
        response = await client.post(
            "/v1/sends", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_json"
    assert await queue_depth(amqp_url, Topology(settings.namespace).tracker_queue) == 0


async def test_registrations_need_the_api_token_not_the_postback_token(
    settings: Settings,
) -> None:
    guarded = settings.model_copy(
        update={"api_token": SecretStr("api-secret"), "postback_token": SecretStr("pb-secret")}
    )
    async with running_ingress(guarded) as client:
        wrong = await client.post(
            "/v1/sends", json=SEND, headers={"Authorization": "Bearer pb-secret"}
        )
        assert wrong.status == 401
        right = await client.post(
            "/v1/sends", json=SEND, headers={"Authorization": "Bearer api-secret"}
        )
        assert right.status == 202

"""POST /postbacks: what Braze posts comes out of the tracker queue intact."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.amqp import drain, queue_depth
from tests.support.braze import BRAZE_EXAMPLES
from tests.support.factories import tracked
from tests.support.ingress_server import running_ingress
from txmail.core.events import MAX_NESTING, POSTBACK_TYPE, event_id
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.status import as_json, describe
from txmail.workers.store import open_store
from txmail.workers.timeouts import DeliveryTimeouts


async def test_each_braze_example_is_published_intact(settings: Settings, amqp_url: str) -> None:
    async with running_ingress(settings) as client:
        for example in BRAZE_EXAMPLES:
            response = await client.post("/postbacks", json=example)
            assert response.status == 202
            assert await response.json() == {"accepted": 1, "event_ids": [event_id(example)]}

    messages = await drain(
        amqp_url, Topology(settings.namespace).tracker_queue, len(BRAZE_EXAMPLES)
    )
    by_status = {json.loads(m.body)["status"]: m for m in messages}
    for example in BRAZE_EXAMPLES:
        message = by_status[example["status"]]
        assert json.loads(message.body) == example
        assert message.routing_key == f"postback.{example['status']}"
        assert message.content_type == "application/json"
        assert message.delivery_mode == 2  # persistent
        assert message.message_id == event_id(example)
        assert message.type == "postback"
        assert message.headers["received_at"]


async def test_an_array_publishes_one_message_per_postback(
    settings: Settings, amqp_url: str
) -> None:
    async with running_ingress(settings) as client:
        response = await client.post("/postbacks", json=BRAZE_EXAMPLES)
        assert response.status == 202
        assert (await response.json())["accepted"] == 5

    messages = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 5)
    assert sorted(json.loads(m.body)["status"] for m in messages) == sorted(
        e["status"] for e in BRAZE_EXAMPLES
    )


async def test_a_duplicate_gets_the_same_event_id(settings: Settings, amqp_url: str) -> None:
    reordered = json.loads(json.dumps(BRAZE_EXAMPLES[4]))
    reordered["metadata"] = dict(reversed(list(reordered["metadata"].items())))
    async with running_ingress(settings) as client:
        first = await (await client.post("/postbacks", json=BRAZE_EXAMPLES[4])).json()
        second = await (await client.post("/postbacks", json=reordered)).json()
    assert first["event_ids"] == second["event_ids"]
    messages = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 2)
    assert messages[0].message_id == messages[1].message_id


async def test_an_undocumented_status_is_kept_under_its_own_routing_key(
    settings: Settings, amqp_url: str
) -> None:
    postback = {"dispatch_id": "d-1", "status": "deferred", "metadata": {}, "extra": [1, 2]}
    async with running_ingress(settings) as client:
        assert (await client.post("/postbacks", json=postback)).status == 202
    [message] = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 1)
    assert message.routing_key == "postback.deferred"
    assert json.loads(message.body) == postback


async def test_a_status_with_topic_characters_cannot_escape_its_routing_key(
    settings: Settings, amqp_url: str
) -> None:
    async with running_ingress(settings) as client:
        response = await client.post("/postbacks", json={"dispatch_id": "d", "status": "a.b#*"})
        assert response.status == 202
    [message] = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 1)
    assert message.routing_key == "postback.a_b__"


TOO_LONG = "x" * 201
# Valid JSON, but nested deeper than Python's parser recurses.
TOO_DEEP = b"[" * 100_000 + b"]" * 100_000


def with_lone_surrogate(encoding: str) -> bytes:
    """A postback in ``encoding`` whose metadata holds a raw unpaired surrogate (U+D800)."""
    head = '{"dispatch_id": "d", "status": "sent", "metadata": {"x": "'.encode(encoding)
    surrogate = "\ud800".encode(encoding, "surrogatepass")
    return head + surrogate + '"}}'.encode(encoding)


def nested(levels: int) -> bytes:
    """A postback whose objects nest ``levels`` deep, the postback itself being the first."""
    inner = b'{"a": ' * (levels - 1) + b"1" + b"}" * (levels - 1)
    return b'{"dispatch_id": "d", "status": "sent", "metadata": ' + inner + b"}"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (TOO_DEEP, 400, "invalid_json"),
        # A lone UTF-16 surrogate: Python reads it, but it is not text and cannot be sent on.
        (
            b'{"dispatch_id": "d", "status": "sent", "metadata": {"x": "\\ud800"}}',
            400,
            "invalid_json",
        ),
        (
            b'{"dispatch_id": "d", "status": "sent", "metadata": {"\\uDFFF": 1}}',
            400,
            "invalid_json",
        ),
        (
            b'{"dispatch_id": "d", "status": "sent", "metadata": {"x": ' + TOO_DEEP + b"}}",
            400,
            "invalid_json",
        ),
        # Raw, not escaped: in UTF-8 (bytes ED A0 80) and in UTF-16 and UTF-32 bodies.
        (with_lone_surrogate("utf-8"), 400, "invalid_json"),
        (with_lone_surrogate("utf-16-le"), 400, "invalid_json"),
        (with_lone_surrogate("utf-16-be"), 400, "invalid_json"),
        (with_lone_surrogate("utf-32-le"), 400, "invalid_json"),
        # Escaped, in a UTF-16 body.
        (
            '{"dispatch_id": "d", "status": "sent", "metadata": {"x": "\\ud800"}}'.encode(
                "utf-16-le"
            ),
            400,
            "invalid_json",
        ),
        (b'"a string"', 400, "wrong_type"),
        (b"42", 400, "wrong_type"),
        (b"null", 400, "wrong_type"),
        (b"[]", 400, "empty_array"),
        (b'[{"dispatch_id": "d", "status": "sent"}, 7]', 422, "invalid_postback"),
        (b'{"status": "sent"}', 422, "invalid_postback"),
        (b'{"dispatch_id": "", "status": "sent"}', 422, "invalid_postback"),
        (b'{"dispatch_id": 12, "status": "sent"}', 422, "invalid_postback"),
        (f'{{"dispatch_id": "{TOO_LONG}", "status": "sent"}}'.encode(), 422, "invalid_postback"),
        (b'{"dispatch_id": "d", "status": 3}', 422, "invalid_postback"),
        (b'{"dispatch_id": "d"}', 422, "invalid_postback"),
        (b'{"dispatch_id": "d", "status": "sent", "metadata": "x"}', 422, "invalid_postback"),
        # What the stores index or keep as text: PostgreSQL refuses NUL, and index
        # entries of many kilobytes, where SQLite takes both.
        (b'{"dispatch_id": "d\\u0000", "status": "sent"}', 422, "invalid_postback"),
        (b'{"dispatch_id": "d", "status": "sent\\u0000"}', 422, "invalid_postback"),
        (
            b'{"dispatch_id": "d", "status": "bounced", "metadata": {"reason": "5\\u000050"}}',
            422,
            "invalid_postback",
        ),
        (
            f'{{"dispatch_id": "d", "status": "sent", '
            f'"metadata": {{"external_send_id": "{TOO_LONG}"}}}}'.encode(),
            422,
            "invalid_postback",
        ),
        # A number would key the message by dispatch_id, apart from its registration.
        (
            b'{"dispatch_id": "d", "status": "sent", "metadata": {"external_send_id": 1234}}',
            422,
            "invalid_postback",
        ),
        (
            b'{"dispatch_id": "d", "status": "sent", "metadata": {"campaign_api_id": ["c"]}}',
            422,
            "invalid_postback",
        ),
        (
            b'{"dispatch_id": "d", "status": "sent", "metadata": {"campaign_api_id": "c\\u0000"}}',
            422,
            "invalid_postback",
        ),
        # Not JSON numbers: Python reads them, the store would give them back as null.
        (
            b'{"dispatch_id": "d", "status": "sent", "metadata": {"x": NaN}}',
            422,
            "invalid_postback",
        ),
        (
            b'{"dispatch_id": "d", "status": "sent", "metadata": {"x": [1, Infinity]}}',
            422,
            "invalid_postback",
        ),
        (b'{"dispatch_id": "d", "status": "sent", "score": -Infinity}', 422, "invalid_postback"),
        # Deeper than every later stage (the API, `txmail status --json`) can serialise.
        (nested(33), 422, "invalid_postback"),
        (nested(260), 422, "invalid_postback"),
        (
            b'{"dispatch_id": "d", "status": "bounced", "metadata": {"reason": "'
            + b"5" * 1001
            + b'"}}',
            422,
            "invalid_postback",
        ),
    ],
)
async def test_bad_input_is_refused_with_a_json_error_and_publishes_nothing(
    settings: Settings, amqp_url: str, body: bytes, status: int, error: str
) -> None:
    async with running_ingress(settings) as client:
        response = await client.post(
            "/postbacks", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == status
        payload = await response.json()
        assert payload["error"] == error
        assert payload["message"]
    assert await queue_depth(amqp_url, Topology(settings.namespace).tracker_queue) == 0


async def test_the_deepest_nesting_and_the_longest_reason_allowed_are_published(
    settings: Settings, amqp_url: str
) -> None:
    longest_reason = {"dispatch_id": "d", "status": "bounced", "metadata": {"reason": "5" * 1000}}
    async with running_ingress(settings) as client:
        for body in (nested(32), json.dumps(longest_reason).encode()):
            response = await client.post(
                "/postbacks", data=body, headers={"Content-Type": "application/json"}
            )
            assert response.status == 202, await response.text()
    await drain(amqp_url, Topology(settings.namespace).tracker_queue, 2)


async def test_a_utf16_body_is_read(settings: Settings, amqp_url: str) -> None:
    postback = {
        "dispatch_id": "d",
        "status": "bounced",
        "metadata": {"reason": "r\u00e9fus\U0001f600"},
    }
    async with running_ingress(settings) as client:
        response = await client.post(
            "/postbacks",
            data=json.dumps(postback, ensure_ascii=False).encode("utf-16-le"),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 202
    [message] = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 1)
    assert json.loads(message.body) == postback


async def test_the_deepest_postback_accepted_can_be_read_back(tmp_path: Path) -> None:
    """What the ingress lets in, the store keeps and the API and `txmail status --json`
    write out again (pydantic's serialiser stops at about 255 levels in all)."""
    arrived = datetime(2026, 3, 1, tzinfo=UTC)
    store = await open_store(
        f"sqlite:///{tmp_path / 'txmail.db'}", DeliveryTimeouts(timedelta(minutes=10))
    )
    try:
        await store.apply(
            [tracked(POSTBACK_TYPE, json.loads(nested(MAX_NESTING)), arrived)], arrived
        )
        view = await store.find(dispatch_id="d")
    finally:
        await store.close()
    assert view is not None
    deepest = json.loads(nested(MAX_NESTING))
    [entry] = json.loads(view.model_dump_json())["timeline"]  # the API's answer
    assert entry["body"] == deepest
    [entry] = json.loads(as_json(view))["timeline"]  # txmail status --json
    assert entry["body"] == deepest
    assert "sent" in describe(view)  # txmail status


async def test_validation_errors_name_the_item_and_field(settings: Settings) -> None:
    body = [{"dispatch_id": "ok", "status": "sent"}, {"dispatch_id": "", "status": "sent"}]
    async with running_ingress(settings) as client:
        response = await client.post("/postbacks", json=body)
        details = (await response.json())["details"]
    assert details == [
        {"index": 1, "field": "dispatch_id", "message": "String should have at least 1 character"}
    ]


async def test_an_oversize_body_is_refused_with_413(settings: Settings, amqp_url: str) -> None:
    settings = settings.model_copy(update={"max_body_bytes": 2048})
    big = {"dispatch_id": "d", "status": "sent", "metadata": {"pad": "x" * 4096}}
    async with running_ingress(settings) as client:
        response = await client.post("/postbacks", json=big)
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"
    assert await queue_depth(amqp_url, Topology(settings.namespace).tracker_queue) == 0


async def test_too_long_an_array_is_refused_with_413(settings: Settings, amqp_url: str) -> None:
    settings = settings.model_copy(update={"max_events_per_request": 3})
    async with running_ingress(settings) as client:
        response = await client.post("/postbacks", json=BRAZE_EXAMPLES[:4])
        assert response.status == 413
        assert (await response.json())["error"] == "too_many_postbacks"
    assert await queue_depth(amqp_url, Topology(settings.namespace).tracker_queue) == 0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/postbacks", 405), ("PUT", "/postbacks", 405), ("POST", "/nowhere", 404)],
)
async def test_wrong_method_and_unknown_path_answer_json(
    settings: Settings, method: str, path: str, status: int
) -> None:
    async with running_ingress(settings) as client:
        response = await client.request(method, path)
        assert response.status == status
        assert response.content_type == "application/json"
        assert (await response.json())["message"]


async def test_health_endpoints(settings: Settings) -> None:
    async with running_ingress(settings) as client:
        assert (await client.get("/healthz")).status == 200
        assert await (await client.get("/readyz")).json() == {"status": "ready"}

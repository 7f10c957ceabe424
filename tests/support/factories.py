"""Events as the ingress (or the fallback executor) would publish them, for tests."""

import json
from datetime import datetime
from typing import Any

from txmail.core.broker import Outgoing
from txmail.core.events import (
    POSTBACK_TYPE,
    SEND_REGISTRATION_TYPE,
    event_id,
    postback_routing_key,
)
from txmail.workers.incoming import decode
from txmail.workers.incoming import received_at as arrived_at
from txmail.workers.store.protocol import TrackedEvent


def raw_postback(dispatch_id: str, status: str, **metadata: Any) -> dict[str, Any]:
    return {"dispatch_id": dispatch_id, "status": status, "metadata": metadata}


def tracked(kind: str, raw: dict[str, Any], received_at: datetime) -> TrackedEvent:
    return decode(kind, json.dumps(raw).encode(), received_at)


def postback(dispatch_id: str, status: str, arrived: datetime, **metadata: Any) -> TrackedEvent:
    """A postback that reached the ingress at ``arrived``; ``metadata`` as Braze sends it."""
    return tracked(POSTBACK_TYPE, raw_postback(dispatch_id, status, **metadata), arrived)


def registration(received_at: datetime, **fields: Any) -> TrackedEvent:
    return tracked(SEND_REGISTRATION_TYPE, fields, received_at)


def outgoing_postback(raw: dict[str, Any], received_at: datetime) -> Outgoing:
    """The message the ingress publishes for ``raw``."""
    return Outgoing(
        routing_key=postback_routing_key(raw["status"]),
        body=json.dumps(raw).encode(),
        message_id=event_id(raw),
        type=POSTBACK_TYPE,
        headers={"received_at": received_at.isoformat()},
    )


def decoded(message: Outgoing, now: datetime) -> TrackedEvent | Exception:
    """``message`` as the tracker decodes it on delivery: the event, or why it is none."""
    try:
        return decode(message.type, message.body, arrived_at(message.headers or {}, None, now))
    except Exception as error:
        return error


# Messages on the tracker queue that no worker can ever process (message ids bad-1..5).
NOT_THE_CONTRACT = [
    Outgoing("postback.sent", b"{not json", "bad-1", POSTBACK_TYPE),
    Outgoing("postback.sent", b'{"status": "sent"}', "bad-2", POSTBACK_TYPE),
    Outgoing("send.other", b"{}", "bad-3", "something_else"),
    Outgoing("postback.sent", b"[" * 5000 + b"]" * 5000, "bad-4", POSTBACK_TYPE),
    Outgoing(
        "postback.sent",
        b'{"dispatch_id": "d", "status": "sent", "metadata": {"x": "\\ud800"}}',
        "bad-5",
        POSTBACK_TYPE,
    ),
]

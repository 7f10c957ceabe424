"""The events on the wire: what the ingress publishes and the workers consume.

A postback travels as the JSON object Braze posted, unchanged, with AMQP properties
that say what it is (``type``), when txmail received it (``timestamp``) and which
event it is (``message_id``, the same for the same postback posted twice).
"""

import hashlib
import json
import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictStr,
    field_validator,
    model_validator,
)

from txmail.core.durations import PositiveDuration

KNOWN_STATUSES: Final = frozenset({"sent", "processed", "aborted", "delivered", "bounced"})
POSTBACK_TYPE: Final = "postback"
JSON: Final = "application/json"
# The longest id a store indexes: a sender's own id, a campaign id.
MAX_ID_LENGTH: Final = 200
NUL: Final = "\x00"


def _without_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL (SQLite can): refused here, so that both stores
    # keep the same events instead of one dead-lettering what the other accepted.
    if NUL in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


Text = Annotated[StrictStr, AfterValidator(_without_nul)]
"""A string a store keeps as text (a column, an index entry)."""

# Metadata ids a store keeps in columns of its own (and indexes).
_STORED_IDS: Final = ("external_send_id", "campaign_api_id")
# The longest reason kept: Braze's are an SMTP reply or a sentence; anything longer is
# not one, and would be stored, shown and put in SMS bodies (`$reason`) as it came.
MAX_REASON_LENGTH: Final = 1000
# How deep objects and arrays may nest in a postback, the postback itself being the
# first level. Braze's nest 2 or 3 deep; every later stage (the store, the API's
# serialiser, `txmail status --json`) nests a postback a few levels deeper still, and
# must be able to write it out.
MAX_NESTING: Final = 32


def _plain_json_problem(value: Any, depth: int = 1, path: str = "") -> str | None:
    """What makes ``value`` more than plain JSON a later stage can keep, or None:
    nesting deeper than MAX_NESTING, or NaN and infinities, which Python reads and
    JSON does not have (the store would give them back as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path or 'value'}: {value} is not a JSON number"
    if isinstance(value, dict | list):
        if depth > MAX_NESTING:
            return f"{path}: nested deeper than {MAX_NESTING} levels"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if problem := _plain_json_problem(
                item, depth + 1, f"{path}.{key}" if path else str(key)
            ):
                return problem
    return None


class Postback(BaseModel):
    """One Braze transactional status postback. Unknown fields are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    dispatch_id: Text = Field(min_length=1, max_length=MAX_ID_LENGTH)
    status: Text = Field(min_length=1, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plain_json(cls, data: Any) -> Any:
        if problem := _plain_json_problem(data):
            raise ValueError(problem)
        return data

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        for name in _STORED_IDS:
            value = metadata.get(name)
            if value is not None and not isinstance(value, str):
                # Read as absent, an id that is a number would key the message by its
                # dispatch_id, apart from the registration and the other postbacks.
                raise ValueError(f"{name} must be a string")
            if value is not None and len(value) > MAX_ID_LENGTH:
                raise ValueError(f"{name} must be at most {MAX_ID_LENGTH} characters")
        for name in (*_STORED_IDS, "reason"):
            value = metadata.get(name)
            if isinstance(value, str) and NUL in value:
                raise ValueError(f"{name} must not contain the NUL character (\\u0000)")
        reason = metadata.get("reason")
        if isinstance(reason, str) and len(reason) > MAX_REASON_LENGTH:
            raise ValueError(f"reason must be at most {MAX_REASON_LENGTH} characters")
        return metadata

    @property
    def external_send_id(self) -> str | None:
        value = self.metadata.get("external_send_id")
        return value if isinstance(value, str) else None

    @property
    def campaign_api_id(self) -> str | None:
        value = self.metadata.get("campaign_api_id")
        return value if isinstance(value, str) else None

    @property
    def is_known_status(self) -> bool:
        return self.status in KNOWN_STATUSES


def canonical_json(value: Any) -> bytes:
    """One byte string per JSON value, whatever the key order or spacing it arrived with."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_id(raw: dict[str, Any]) -> str:
    """A deterministic id for a postback: the same object posted twice gets the same id.

    It covers the whole object (dispatch id, status, and every timestamp and reason),
    because that is what makes two postbacks the same event.
    """
    return hashlib.sha256(canonical_json(raw)).hexdigest()[:32]


_NOT_A_WORD = re.compile(r"[^A-Za-z0-9_-]")


def postback_routing_key(status: str) -> str:
    """``postback.<status>``; characters that mean something to a topic exchange become ``_``."""
    return f"postback.{_NOT_A_WORD.sub('_', status)}"


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- Registered sends, fallback requests and fallback attempts --------------------
# The ingress publishes SendRegistration; the workers publish FallbackRequest; the
# fallback executor publishes FallbackAttempt, which the workers put on the timeline.

SEND_REGISTRATION_TYPE: Final = "send_registration"
FALLBACK_REQUEST_TYPE: Final = "fallback_request"
FALLBACK_ATTEMPT_TYPE: Final = "fallback_attempt"
SEND_REGISTERED_ROUTING_KEY: Final = "send.registered"


class Trigger(StrEnum):
    """Why a fallback was decided."""

    ABORTED = "aborted"
    BOUNCED = "bounced"
    TIMEOUT = "timeout"  # sent or processed, but not delivered before the deadline
    NOT_SENT = "not_sent"  # registered, but Braze never reported even a `sent` in time
    # A change of Braze's health (workers/health/), routed by rules like a fallback;
    # about Braze (or a campaign), not about one message.
    BRAZE_DEGRADED = "braze_degraded"
    BRAZE_RECOVERED = "braze_recovered"


# What a rule's `"*"` matches: every trigger about one message, not a health change.
MESSAGE_TRIGGERS: Final = frozenset(
    {Trigger.ABORTED, Trigger.BOUNCED, Trigger.TIMEOUT, Trigger.NOT_SENT}
)
# Decided when a message's deadline passes: their requests carry Braze's health then.
DEADLINE_TRIGGERS: Final = frozenset({Trigger.TIMEOUT, Trigger.NOT_SENT})

# Braze's health as a deadline's claim saw it: degraded when the deployment was judged
# degraded overall or for the message's campaign (README, Braze's health).
BrazeHealth = Literal["degraded", "healthy"]


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Loose on purpose: the company's mailer is the judge of an address; this only
    # catches what is plainly not one, or more than one: the characters that separate
    # or wrap addresses in a mail header (`,` `;` `:` `<` `>` `"` `(` `)`) are refused.
    email: StrictStr | None = Field(
        default=None, max_length=320, pattern=r'^[^@\s,;:<>"()]+@[^@\s,;:<>"()]+$'
    )
    # E.164, what SMS APIs in Twilio's shape accept.
    phone: StrictStr | None = Field(default=None, pattern=r"^\+[1-9]\d{6,14}$")


class SendRegistration(BaseModel):
    """An internal app saying "I asked Braze to send this; here is who it is for"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    external_send_id: Text = Field(min_length=1, max_length=MAX_ID_LENGTH)
    campaign_api_id: Text | None = Field(default=None, max_length=MAX_ID_LENGTH)
    recipient: Recipient = Field(default_factory=Recipient)
    # Finite: the store keeps the registration as JSON, where NaN would come back as
    # null, which no longer validates, and every later event of the send would fail.
    variables: dict[str, StrictStr | int | FiniteFloat | bool] = Field(default_factory=dict)
    delivery_timeout: PositiveDuration | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON object published for this registration, checked the way a worker
        will read it: what the ingress answers 202 for must never be dead-lettered.

        Raises ValidationError when the wire form does not read back, e.g. a
        delivery_timeout under half a millisecond, which the wire rounds to "0s".
        """
        wire = self.model_dump(mode="json", exclude_none=True)
        SendRegistration.model_validate(json.loads(canonical_json(wire)))
        return wire


class FallbackRequest(BaseModel):
    """Everything a fallback handler needs about one failed or late email.

    ``idempotency_key`` is stable per message: the same message never gets two keys,
    so a handler can pass ``f"{idempotency_key}:{handler}"`` downstream.
    """

    model_config = ConfigDict(frozen=True)

    idempotency_key: StrictStr
    trigger: Trigger
    dispatch_id: StrictStr | None
    external_send_id: StrictStr | None
    campaign_api_id: StrictStr | None
    reason: StrictStr | None = None
    # Braze's own timestamps by name (`sent_at`, `bounced_at`, ...), as Braze wrote them.
    braze_timestamps: dict[str, str] = Field(default_factory=dict)
    recipient: Recipient = Field(default_factory=Recipient)
    variables: dict[str, StrictStr | int | float | bool] = Field(default_factory=dict)
    decided_at: datetime
    # Stamped on a deadline trigger's request when the deadline is claimed, stored with
    # it, never at publish time: a republished copy must match the same rule (invariant
    # 3). None for the other triggers.
    braze_health: BrazeHealth | None = None

    @property
    def routing_key(self) -> str:
        return f"fallback.request.{self.trigger.value}"


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"  # transient failure, scheduled again
    PARKED = "parked"  # permanent failure or retries exhausted: in the parking queue
    NO_RULE = "no_rule"  # no rule matched: nothing runs, by configuration
    # This handler failed, but the request is done: a later handler of a
    # `first_success` chain succeeded instead.
    FAILED = "failed"


# The detail of an attempt a handler's open circuit breaker kept from being made: how
# readers of the attempts (the console) tell an open circuit.
CIRCUIT_OPEN_DETAIL: Final = "circuit open: not called"


class FallbackAttempt(BaseModel):
    """One attempt of one handler for one fallback request, for the message's timeline."""

    model_config = ConfigDict(frozen=True)

    idempotency_key: StrictStr
    dispatch_id: StrictStr | None
    external_send_id: StrictStr | None
    handler: StrictStr | None
    attempt: int = Field(ge=0)
    outcome: AttemptOutcome
    detail: StrictStr = ""
    at: datetime

    @property
    def routing_key(self) -> str:
        return f"fallback.result.{self.outcome.value}"

    @property
    def event_id(self) -> str:
        return event_id(self.model_dump(mode="json"))


# --- Braze's health --------------------------------------------------------------
# The workers publish a HealthChange on `health.<health>` when Braze (overall, or for
# one campaign) becomes degraded or recovers, with a fallback request of trigger
# `braze_<health>` for the rules to route.

HEALTH_CHANGE_TYPE: Final = "health_change"
# The prefix of a health change's id, which is its fallback request's idempotency key.
HEALTH_CHANGE_PREFIX: Final = "txh_"


class HealthChange(BaseModel):
    """Braze became degraded, or recovered, overall (``campaign_api_id`` None) or for
    one campaign, judged on the figures it carries."""

    model_config = ConfigDict(frozen=True)

    change_id: StrictStr
    health: Literal["degraded", "recovered"]
    campaign_api_id: StrictStr | None
    at: datetime
    reason: StrictStr
    # The rolling figures it was judged on: sends, p95 latency in seconds, rates.
    figures: dict[str, int | float | None]

    @property
    def routing_key(self) -> str:
        return f"health.{self.health}"

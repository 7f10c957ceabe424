"""Real servers standing in for what fallback handlers talk to: a webhook receiver and a
Twilio-shaped SMS API (one aiohttp app), and an SMTP server (aiosmtpd).

The HTTP side checks what the real ones would check (signature, basic auth, form
fields) and answers with whatever status the test queued up next.
"""

import asyncio
import base64
import hashlib
import hmac
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiohttp import web

WEBHOOK_KEY = b"0123456789abcdef0123456789abcdef"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
SMS_SID = "AC0123456789"
SMS_TOKEN = "sms-token"


@dataclass
class Call:
    idempotency_key: str
    status: int
    body: dict[str, Any]
    user_agent: str = ""


@dataclass
class Endpoint:
    """What one endpoint was sent, and what it answers next (200 once the queue is empty)."""

    answers: deque[int] = field(default_factory=deque)
    default: int = 200
    calls: list[Call] = field(default_factory=list)
    # When set, the next call waits for this event before it answers.
    hold_next: asyncio.Event | None = None
    # When set, the text of every answer instead of a small JSON object.
    answer_text: str | None = None

    async def wait_if_held(self) -> None:
        gate, self.hold_next = self.hold_next, None
        if gate is not None:
            await gate.wait()

    def next_status(self) -> int:
        return self.answers.popleft() if self.answers else self.default

    @property
    def accepted(self) -> list[Call]:
        return [c for c in self.calls if 200 <= c.status < 300]

    @property
    def keys(self) -> set[str]:
        return {c.idempotency_key for c in self.calls}


def verify_standard_webhook(request_headers: Any, body: bytes) -> str:
    """Check the signature as a Standard Webhooks receiver does; return the webhook-id."""
    webhook_id = request_headers["webhook-id"]
    timestamp = request_headers["webhook-timestamp"]
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(WEBHOOK_KEY, signed, hashlib.sha256).digest()).decode()
    versions = dict(part.split(",", 1) for part in request_headers["webhook-signature"].split())
    if not hmac.compare_digest(versions.get("v1", ""), expected):
        raise web.HTTPUnauthorized(text="bad signature")
    return str(webhook_id)


class Receiver:
    def __init__(self) -> None:
        self.webhook = Endpoint()
        self.sms = Endpoint()
        self.app = web.Application()
        self.app.router.add_post("/hook", self._webhook)
        self.app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._sms)
        self.url = ""

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = verify_standard_webhook(request.headers, body)
        await self.webhook.wait_if_held()
        status = self.webhook.next_status()
        user_agent = request.headers.get("User-Agent", "")
        self.webhook.calls.append(Call(webhook_id, status, await request.json(), user_agent))
        if self.webhook.answer_text is not None:
            return web.Response(text=self.webhook.answer_text, status=status)
        return web.json_response({"status": status}, status=status)

    async def _sms(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{SMS_SID}:{SMS_TOKEN}".encode()).decode()
        if request.match_info["sid"] != SMS_SID or request.headers.get("Authorization") != expected:
            raise web.HTTPUnauthorized(text="bad credentials")
        form = await request.post()
        if not all(isinstance(form.get(k), str) and form.get(k) for k in ("To", "From", "Body")):
            return web.json_response({"message": "To, From and Body are required"}, status=400)
        status = self.sms.next_status()
        key = request.headers.get("I-Twilio-Idempotency-Token", "")
        form_fields = {k: str(v) for k, v in form.items()}
        user_agent = request.headers.get("User-Agent", "")
        self.sms.calls.append(Call(key, status, form_fields, user_agent))
        return web.json_response(
            {"sid": "SM1", "status": "queued"}, status=201 if status == 200 else status
        )


class MailCollector:
    """aiosmtpd handler keeping every mail it accepted."""

    def __init__(self) -> None:
        self.mails: list[Message] = []
        self.envelope_recipients: list[list[str]] = []
        # Recipients it answers "550 5.1.1" to, as for a mailbox that does not exist.
        self.unknown_recipients: set[str] = set()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.unknown_recipients:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(message_from_bytes(envelope.content))
        self.envelope_recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


SMTP_USER = "txmail"
SMTP_PASSWORD = "relay-password"


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    """aiosmtpd authenticator accepting only SMTP_USER / SMTP_PASSWORD."""
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode(),
        auth_data.password.decode(),
    ) == (SMTP_USER, SMTP_PASSWORD)
    return AuthResult(success=ok, handled=False)

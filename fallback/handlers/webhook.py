"""``webhook``: a JSON POST signed the Standard Webhooks way (standardwebhooks.com).

The receiver checks ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of
``{webhook-id}.{webhook-timestamp}.{body}`` under the secret) and de-duplicates on
``webhook-id``, which is the handler's idempotency key: the same on every retry.
"""

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import ClassVar

from pydantic import AnyHttpUrl, SecretStr, field_validator

from txmail.core.events import FallbackRequest
from txmail.core.readable import readable
from txmail.fallback.handler import HandlerConfig, HandlerResources, TransientFailure
from txmail.fallback.handlers.common import (
    HTTP_TRANSPORT_ERRORS,
    USER_AGENT,
    check_http_response,
    fallback_payload,
)

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the prefix Standard Webhooks secrets start with


class WebhookConfig(HandlerConfig):
    secret_fields: ClassVar[tuple[str, ...]] = ("secret",)

    url: AnyHttpUrl
    # "whsec_" followed by the base64 of the signing key, as Standard Webhooks prints it.
    secret: SecretStr

    @field_validator("secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr) -> SecretStr:
        signing_key(value)
        return value


def signing_key(secret: SecretStr) -> bytes:
    text = secret.get_secret_value()
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"the secret must start with {SECRET_PREFIX!r} (Standard Webhooks)")
    try:
        key = base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError(f"the secret after {SECRET_PREFIX!r} must be base64") from None
    if len(key) < 16:
        raise ValueError("the secret must hold at least 16 bytes (24 base64 characters)")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookHandler:
    config_model = WebhookConfig

    def __init__(self, name: str, config: WebhookConfig, resources: HandlerResources) -> None:
        self._name = name
        self._config = config
        self._key = signing_key(config.secret)
        self._http = resources.http

    async def send(self, request: FallbackRequest, idempotency_key: str) -> None:
        body = json.dumps(fallback_payload(request, self._name)).encode()
        # The time of this attempt: receivers reject old timestamps to stop replays.
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": idempotency_key,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, idempotency_key, timestamp, body),
        }
        url = str(self._config.url)
        try:
            async with self._http.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await check_http_response(response, f"POST {url}")
        except HTTP_TRANSPORT_ERRORS as error:
            raise TransientFailure(f"POST {url} failed: {readable(error)}") from error

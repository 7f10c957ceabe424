"""``sms``: a text message through any API in the shape of Twilio's Messages API.

``POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`` with the form
fields ``To``, ``From``, ``Body`` and basic auth ``account_sid:auth_token``. The
idempotency key travels in ``I-Twilio-Idempotency-Token``: Twilio only sends it on its
own webhooks and ignores it here, but a company gateway can de-duplicate on it.
"""

import base64
import re
from typing import ClassVar

from pydantic import AnyHttpUrl, Field, SecretStr

from txmail.core.events import FallbackRequest
from txmail.core.readable import readable
from txmail.fallback.handler import (
    HandlerConfig,
    HandlerResources,
    TransientFailure,
    UnusableRequest,
)
from txmail.fallback.handlers.common import (
    HTTP_TRANSPORT_ERRORS,
    USER_AGENT,
    check_http_response,
)
from txmail.fallback.templates import TextTemplate, template_context

IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
# What no provider takes as a number to text: nothing at all, blanks, control characters.
_NOT_A_NUMBER = re.compile(r"^$|[\s\x00-\x1f\x7f]")


class SmsConfig(HandlerConfig):
    secret_fields: ClassVar[tuple[str, ...]] = ("auth_token",)

    base_url: AnyHttpUrl = AnyHttpUrl("https://api.twilio.com")
    account_sid: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    auth_token: SecretStr
    sender: str = Field(alias="from", min_length=1)
    to: TextTemplate = TextTemplate("$recipient_phone")
    body: TextTemplate


class SmsHandler:
    config_model = SmsConfig

    def __init__(self, name: str, config: SmsConfig, resources: HandlerResources) -> None:
        self._config = config
        self._http = resources.http
        base = str(config.base_url).rstrip("/")
        self._url = f"{base}/2010-04-01/Accounts/{config.account_sid}/Messages.json"
        credentials = f"{config.account_sid}:{config.auth_token.get_secret_value()}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()

    async def send(self, request: FallbackRequest, idempotency_key: str) -> None:
        context = template_context(request)
        to = self._config.to.render(context, "to")
        if _NOT_A_NUMBER.search(to):
            raise UnusableRequest(f"template 'to' gave {to!r}, which is not a number to text")
        body = self._config.body.render(context, "body")
        if not body.strip():
            raise UnusableRequest("template 'body' gave an empty message")
        form = {"To": to, "From": self._config.sender, "Body": body}
        try:
            async with self._http.post(
                self._url,
                data=form,
                headers={
                    "Authorization": self._authorization,
                    IDEMPOTENCY_HEADER: idempotency_key,
                    "User-Agent": USER_AGENT,
                },
                allow_redirects=False,
            ) as response:
                await check_http_response(response, f"POST {self._url}")
        except HTTP_TRANSPORT_ERRORS as error:
            raise TransientFailure(f"POST {self._url} failed: {readable(error)}") from error

"""``smtp``: a mail through the company's own relay (host, port, STARTTLS, optional login).

The Message-ID is derived from the idempotency key, so every retry sends the same
Message-ID and a relay or mailbox that de-duplicates on it keeps one copy.
"""

import hashlib
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import ClassVar

import aiosmtplib
from pydantic import Field, SecretStr, field_validator, model_validator

from txmail.core.events import FallbackRequest
from txmail.core.readable import readable
from txmail.fallback.handler import (
    HandlerConfig,
    HandlerResources,
    PermanentFailure,
    TransientFailure,
    UnusableRequest,
)
from txmail.fallback.handlers.common import USER_AGENT
from txmail.fallback.templates import TextTemplate, template_context


class SmtpConfig(HandlerConfig):
    secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    # CA certificates (PEM) to verify the relay with, e.g. the company's internal CA;
    # by default the system's.
    ca_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(alias="from", min_length=3, pattern=r"@")
    to: TextTemplate = TextTemplate("$recipient_email")
    subject: TextTemplate
    body: TextTemplate

    @model_validator(mode="after")
    def _login_needs_both(self) -> "SmtpConfig":
        if (self.username is None) != (self.password is None):
            raise ValueError("set both 'username' and 'password' (or 'password_env'), or neither")
        return self

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


_STARTTLS_MISSING = "STARTTLS extension not supported"


def message_id(idempotency_key: str, sender: str) -> str:
    domain = sender.rpartition("@")[2].strip(" >") or "txmail.invalid"
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]}@{domain}>"


def _failure_for_code(code: int, detail: str) -> Exception:
    """SMTP's own rule: 4xx is temporary, 5xx is final."""
    return TransientFailure(detail) if 400 <= code < 500 else PermanentFailure(detail)


def _set_header(mail: EmailMessage, header: str, value: str, field: str) -> None:
    """A rendered template as a header; one that cannot be a header (a line break from
    a registered variable, say) fails for good: no retry changes it."""
    try:
        mail[header] = value
    except ValueError as error:
        raise UnusableRequest(
            f"template {field!r} gave {value!r}, which cannot be a mail header: {error}"
        ) from error


def _set_recipient(mail: EmailMessage, value: str) -> None:
    """The rendered ``to`` as the one recipient: a comma list or a bare name would
    send the fallback to addresses nobody registered, so it fails for good."""
    _set_header(mail, "To", value, "to")
    header = mail["To"]
    addresses = header.addresses
    if len(addresses) != 1 or not addresses[0].domain or header.defects:
        raise UnusableRequest(
            f"template 'to' gave {value!r}, which is not exactly one mail address"
        )


class SmtpHandler:
    config_model = SmtpConfig

    def __init__(self, name: str, config: SmtpConfig, resources: HandlerResources) -> None:
        self._config = config

    async def send(self, request: FallbackRequest, idempotency_key: str) -> None:
        config = self._config
        context = template_context(request)
        mail = EmailMessage()
        mail["From"] = config.sender
        _set_recipient(mail, config.to.render(context, "to"))
        _set_header(mail, "Subject", config.subject.render(context, "subject"), "subject")
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = message_id(idempotency_key, config.sender)
        mail["X-Mailer"] = USER_AGENT
        mail.set_content(config.body.render(context, "body"))
        where = f"{config.host}:{config.port}"
        try:
            await aiosmtplib.send(
                mail,
                hostname=config.host,
                port=config.port,
                start_tls=config.starttls,
                username=config.username,
                password=config.password.get_secret_value() if config.password else None,
                timeout=config.timeout.total_seconds(),
                cert_bundle=str(config.ca_file) if config.ca_file else None,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [refused.code for refused in error.recipients]
            answers = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in error.recipients)
            detail = f"{where} refused the recipient ({answers})"
            raise _failure_for_code(min(codes, default=550), detail) from error
        except aiosmtplib.SMTPResponseException as error:
            detail = f"{where} answered {error.code} {error.message}"
            raise _failure_for_code(error.code, detail) from error
        except aiosmtplib.SMTPNotSupported as error:
            raise PermanentFailure(f"{where}: {error} (check 'starttls')") from error
        except (aiosmtplib.SMTPException, OSError) as error:
            # aiosmtplib says "no STARTTLS" with a bare SMTPException, only in words.
            if config.starttls and _STARTTLS_MISSING in str(error):
                raise PermanentFailure(f"{where}: {error} (check 'starttls')") from error
            raise TransientFailure(f"{where} unreachable: {readable(error)}") from error

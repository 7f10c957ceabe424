"""``amqp``: the fallback as a persistent JSON message on an exchange of the operator's
choice, for internal systems that listen on RabbitMQ.

Published with ``mandatory`` and confirms: it counts as done only once the broker
routed it to a queue and confirmed it. ``message_id`` is the idempotency key.
"""

import json

from pydantic import Field, field_validator

from txmail.core.broker import Broker, Outgoing
from txmail.core.errors import BrokerUnavailable, ExchangeUnusable, NotTaken
from txmail.core.events import FallbackRequest
from txmail.fallback.handler import (
    HandlerConfig,
    HandlerResources,
    PermanentFailure,
    TransientFailure,
    UnusableRequest,
)
from txmail.fallback.handlers.common import fallback_payload
from txmail.fallback.templates import TextTemplate, template_context

MESSAGE_TYPE = "email_fallback"
# AMQP carries exchange names and routing keys as "short strings": at most 255 bytes.
MAX_NAME_BYTES = 255


class AmqpConfig(HandlerConfig):
    # Must exist already: txmail does not declare other teams' exchanges.
    exchange: str = Field(min_length=1)
    routing_key: TextTemplate = TextTemplate("email.fallback.$trigger")

    @field_validator("exchange")
    @classmethod
    def _short_string(cls, value: str) -> str:
        # Counted in bytes: a longer name would fail every publish, as if the broker were down.
        if len(value.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"an exchange name is at most {MAX_NAME_BYTES} bytes of UTF-8")
        return value


class AmqpHandler:
    config_model = AmqpConfig

    def __init__(self, name: str, config: AmqpConfig, resources: HandlerResources) -> None:
        self._name = name
        self._config = config
        self._broker: Broker = resources.amqp

    def _routing_key(self, request: FallbackRequest) -> str:
        """The rendered routing key; one AMQP cannot carry (a long registered variable)
        fails this request for good, before the broker is involved."""
        routing_key = self._config.routing_key.render(template_context(request), "routing_key")
        size = len(routing_key.encode())
        if size > MAX_NAME_BYTES:
            raise UnusableRequest(
                f"template 'routing_key' gave {size} bytes, more than AMQP's "
                f"{MAX_NAME_BYTES}: {routing_key[:60]!r}..."
            )
        return routing_key

    async def send(self, request: FallbackRequest, idempotency_key: str) -> None:
        routing_key = self._routing_key(request)
        message = Outgoing(
            routing_key=routing_key,
            body=json.dumps(fallback_payload(request, self._name)).encode(),
            message_id=idempotency_key,
            type=MESSAGE_TYPE,
            exchange=self._config.exchange,
        )
        where = f"exchange {self._config.exchange!r}"
        try:
            await self._broker.publish([message])
        except ExchangeUnusable as error:
            raise PermanentFailure(f"{where} {error}") from error
        except NotTaken as error:
            raise TransientFailure(
                f"{where} has no queue bound for routing key {routing_key!r}"
            ) from error
        except BrokerUnavailable as error:
            raise TransientFailure(f"publishing on {where} failed: {error}") from error

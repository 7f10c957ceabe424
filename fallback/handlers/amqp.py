"""``amqp``: the fallback as a persistent JSON message on an exchange of the operator's
choice, for internal systems that listen on RabbitMQ.

Published with ``mandatory`` and confirms: it counts as done only once the broker
routed it to a queue and confirmed it. ``message_id`` is the idempotency key.
"""

import asyncio
import json
from contextlib import suppress

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelClosed,
    ChannelNotFoundEntity,
    DeliveryError,
)
from pydantic import Field, field_validator

from txmail.core.events import FallbackRequest
from txmail.core.readable import readable
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
        self._connection: AbstractRobustConnection = resources.amqp
        self._channel: AbstractChannel | None = None
        self._opening = asyncio.Lock()

    async def _open_channel(self) -> AbstractChannel:
        # Its own channel: a missing exchange closes the channel it was used on, and
        # that must not be the executor's.
        async with self._opening:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            return self._channel

    async def _discard_channel(self) -> None:
        # The broker closed it, but a robust channel reopens itself: close it for good,
        # or every failure would leave one more channel open on the shared connection.
        channel, self._channel = self._channel, None
        if channel is not None:
            with suppress(*CONNECTION_EXCEPTIONS):
                await channel.close()

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
        message = aio_pika.Message(
            json.dumps(fallback_payload(request, self._name)).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=idempotency_key,
            type=MESSAGE_TYPE,
        )
        where = f"exchange {self._config.exchange!r}"
        try:
            channel = await self._open_channel()
            exchange = await channel.get_exchange(self._config.exchange, ensure=False)
            await exchange.publish(message, routing_key, mandatory=True)
        except ChannelNotFoundEntity as error:
            await self._discard_channel()
            raise PermanentFailure(f"{where} does not exist: {error}") from error
        except ChannelClosed as error:  # refused: no permission, an internal exchange
            await self._discard_channel()
            raise PermanentFailure(f"{where} refused the publish: {error}") from error
        except DeliveryError as error:
            raise TransientFailure(
                f"{where} has no queue bound for routing key {routing_key!r}"
            ) from error
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as error:
            self._channel = None
            raise TransientFailure(f"publishing on {where} failed: {readable(error)}") from error

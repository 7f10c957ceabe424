"""What a fallback handler is: the protocol every built-in and third-party handler meets.

A handler *type* is a class: ``config_model`` validates its ``[handlers.NAME]`` table
in the rules file, and calling the class with that config and the shared resources
gives a handler. A handler's ``send`` either returns (done) or raises
TransientFailure (worth retrying) or PermanentFailure (retrying cannot help).
Anything else it raises counts as transient, so retries stay bounded by the schedule.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Protocol, runtime_checkable

import aiohttp
from pydantic import BaseModel, ConfigDict

from txmail.core.broker import Broker
from txmail.core.durations import PositiveWrittenDuration
from txmail.core.errors import TxmailError
from txmail.core.events import FallbackRequest


class HandlerFailure(TxmailError):
    """A handler could not do its job; the message says why, for the timeline."""


class TransientFailure(HandlerFailure):
    """Might work later: connection errors, timeouts, 5xx, 429. Retried."""


class PermanentFailure(HandlerFailure):
    """Will not work without a change: 4xx, a template missing a variable. Parked."""


class UnusableRequest(PermanentFailure):
    """Permanent, and found before the provider was called: this request cannot be
    made into a valid call (a template it cannot fill, a routing key too long for AMQP,
    a ``to`` that is not one address...). It says nothing about the provider, so it
    leaves the provider's circuit as is. Handlers check what they render and raise
    this, rather than let the client library fail on it, which would count as the
    provider failing."""


@dataclass(frozen=True)
class HandlerResources:
    """What the executor shares with every handler; handlers own nothing long-lived."""

    http: aiohttp.ClientSession
    # The executor's own publisher, kept connected: publish with
    # ``Outgoing(..., exchange=NAME)``, confirmed and mandatory.
    amqp: Broker


class HandlerConfig(BaseModel):
    """Base of every handler's table in the rules file.

    A field listed in ``secret_fields`` may instead be given as ``<field>_env``: the
    name of an environment variable holding it (``txmail.fallback.configured`` reads
    it), so the rules file itself can be committed without secrets.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    secret_fields: ClassVar[tuple[str, ...]] = ()

    # How long one call of the handler may take before it counts as a transient failure.
    timeout: PositiveWrittenDuration = timedelta(seconds=10)


@runtime_checkable
class FallbackHandler(Protocol):
    """One configured handler, e.g. ``[handlers.ops-hook]``."""

    async def send(self, request: FallbackRequest, idempotency_key: str) -> None:
        """Deliver the fallback. ``idempotency_key`` is the same on every retry of this
        request with this handler: pass it downstream so the effect happens once."""


class HandlerType(Protocol):
    """A handler class: validates its config, and builds a handler from it."""

    @property
    def config_model(self) -> type[HandlerConfig]: ...

    def __call__(self, name: str, config: Any, resources: HandlerResources) -> FallbackHandler: ...

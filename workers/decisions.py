"""Publishing decided fallbacks: persistent, confirmed, and marked once confirmed.

A decision is recorded before it is published (an outbox), so a publish that fails
costs a retry by the sweeper, never the decision; the idempotency key as message id
lets the executor recognise the rare republish of one already confirmed.
"""

from collections.abc import Sequence

import structlog

from txmail.core.broker import Broker, Outgoing
from txmail.core.errors import BrokerUnavailable
from txmail.core.events import FALLBACK_REQUEST_TYPE, FallbackRequest, utc_now
from txmail.workers.store.protocol import PendingRequest, Store, StoreUnavailable

log = structlog.get_logger(__name__)


def request_message(request: FallbackRequest) -> Outgoing:
    # The idempotency key as message id: see the module's docstring.
    return Outgoing.event(request, request.idempotency_key, FALLBACK_REQUEST_TYPE)


async def publish_decisions(
    broker: Broker, store: Store, pending: Sequence[PendingRequest]
) -> None:
    """Publish and mark; on failure log and leave it to the sweeper's retry."""
    if not pending:
        return
    try:
        await broker.publish([request_message(p.request) for p in pending])
        await store.mark_published([p.message_key for p in pending], utc_now())
    except (BrokerUnavailable, StoreUnavailable) as error:
        log.warning(
            "fallback requests not confirmed yet; the sweeper publishes them again",
            count=len(pending),
            error=str(error),
        )
        return
    for p in pending:
        log.info(
            "fallback decided",
            trigger=p.request.trigger.value,
            dispatch_id=p.request.dispatch_id,
            external_send_id=p.request.external_send_id,
            idempotency_key=p.request.idempotency_key,
        )

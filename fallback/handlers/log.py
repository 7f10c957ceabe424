"""``log``: one structured log line and nothing else, for dry runs of a rule."""

import structlog

from txmail.core.events import FallbackRequest
from txmail.fallback.handler import HandlerConfig, HandlerResources

log = structlog.get_logger(__name__)


class LogConfig(HandlerConfig):
    pass


class LogHandler:
    config_model = LogConfig

    def __init__(self, name: str, config: LogConfig, resources: HandlerResources) -> None:
        self._name = name

    async def send(self, request: FallbackRequest, idempotency_key: str) -> None:
        log.info(
            "fallback (log handler: nothing sent)",
            handler=self._name,
            idempotency_key=idempotency_key,
            trigger=request.trigger.value,
            dispatch_id=request.dispatch_id,
            external_send_id=request.external_send_id,
            campaign_api_id=request.campaign_api_id,
            reason=request.reason,
        )

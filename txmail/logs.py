"""structlog set up once per process: one JSON object per line on stdout.

Libraries that log through the standard library (aio-pika, aiohttp) go through the
same renderer, so every line a txmail process prints is JSON.
"""

import logging
import sys

import structlog
from structlog.typing import Processor

_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
# Their debug output is a frame-by-frame AMQP trace: useful to nobody operating txmail.
_CHATTY_LIBRARIES = ("aiormq", "aio_pika")


def _not_a_failed_connect(record: logging.LogRecord) -> bool:
    """aiormq logs each failed connect at error; txmail's retry line already says it."""
    return not record.getMessage().startswith("error when creating transport")


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
    logging.getLogger("aiormq.connection").addFilter(_not_a_failed_connect)
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(root.level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )

"""structlog set up once per process: one JSON object per line on stderr.

On stderr, so that logs never mix into a command's data output (``txmail status
--json``, ``txmail dlq list --json``), at whatever level.

Libraries that log through the standard library (aio-pika, aiohttp) go through the
same renderer, so every line a txmail process prints is JSON.
"""

import logging
import sys
from collections.abc import Callable

import structlog
from structlog.typing import Processor

_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
# Their debug output is a frame-by-frame AMQP trace: useful to nobody operating txmail.
_CHATTY_LIBRARIES = ("aiormq", "aio_pika")


# Said by txmail itself ("broker connection lost, reconnecting", then "broker not
# reachable, retrying" once per attempt with its number and the next wait), for every
# connection of the process: aiormq logs each lost connection with a traceback and each
# failed connect at error.
_SAID_BY_TXMAIL = {
    "aiormq.connection": ("error when creating transport", "Cancelling cause reader exited"),
}


def _said_by_txmail(prefixes: tuple[str, ...]) -> Callable[[logging.LogRecord], bool]:
    return lambda record: not record.getMessage().startswith(prefixes)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
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
    for name, prefixes in _SAID_BY_TXMAIL.items():
        logging.getLogger(name).addFilter(_said_by_txmail(prefixes))
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(root.level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )

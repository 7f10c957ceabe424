"""Handler types by name: the built-ins, then packages' entry points.

A package adds a handler type by declaring, in its pyproject.toml::

    [project.entry-points."txmail.fallback_handlers"]
    pager = "mypackage.pager:PagerHandler"

and ``type = "pager"`` in the rules file then uses it. Built-in names cannot be taken over.
"""

from importlib.metadata import entry_points

from txmail.core.readable import readable
from txmail.fallback.handler import HandlerConfig, HandlerType
from txmail.fallback.handlers.amqp import AmqpHandler
from txmail.fallback.handlers.log import LogHandler
from txmail.fallback.handlers.sms import SmsHandler
from txmail.fallback.handlers.smtp import SmtpHandler
from txmail.fallback.handlers.webhook import WebhookHandler

ENTRY_POINT_GROUP = "txmail.fallback_handlers"

BUILT_IN_TYPES: dict[str, HandlerType] = {
    "webhook": WebhookHandler,
    "sms": SmsHandler,
    "smtp": SmtpHandler,
    "amqp": AmqpHandler,
    "log": LogHandler,
}


def known_type_names() -> list[str]:
    """Every type name that could be used, without importing any plug-in."""
    return sorted({*BUILT_IN_TYPES, *entry_points(group=ENTRY_POINT_GROUP).names})


def resolve_handler_type(name: str) -> HandlerType:
    """The handler class for ``type = name``; ValueError saying why when there is none."""
    if name in BUILT_IN_TYPES:
        return BUILT_IN_TYPES[name]
    found = entry_points(group=ENTRY_POINT_GROUP).select(name=name)
    if not found:
        raise ValueError(f"unknown handler type {name!r} (known: {', '.join(known_type_names())})")
    entry_point = next(iter(found))
    try:
        loaded = entry_point.load()
    except Exception as error:  # a broken plug-in is a configuration problem to report
        raise ValueError(
            f"handler type {name!r} ({entry_point.value}) failed to load: {readable(error)}"
        ) from None
    config_model = getattr(loaded, "config_model", None)
    if not (
        callable(loaded)
        and isinstance(config_model, type)
        and issubclass(config_model, HandlerConfig)
    ):
        raise ValueError(
            f"handler type {name!r} ({entry_point.value}) is not a handler class: it needs "
            "a 'config_model' subclass of txmail.fallback.handler.HandlerConfig"
        )
    handler_type: HandlerType = loaded
    return handler_type

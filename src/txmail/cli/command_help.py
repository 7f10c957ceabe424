"""What each command's ``--help`` ends with: the environment variables it reads, named
and defaulted from the Settings fields themselves, and its exit codes."""

import argparse
from collections.abc import Iterator
from datetime import timedelta

from pydantic import SecretStr

from txmail.core.durations import format_duration
from txmail.core.settings import Settings

_BROKER = ("amqp_url", "namespace")
_EVERY = tuple(Settings.model_fields)
_HTTP_LIMITS = (
    "http_header_timeout",
    "http_body_timeout",
    "http_keepalive_timeout",
    "http_max_connections",
)

# The Settings fields each command reads (tests/test_cli_help.py checks each is a field,
# and that every field is read by some command).
READS: dict[str, tuple[str, ...]] = {
    "ingress": (
        *_BROKER,
        "http_host",
        "http_port",
        "postback_token",
        "api_token",
        "allowed_networks",
        "max_body_bytes",
        "max_events_per_request",
        *_HTTP_LIMITS,
        "max_publishes_in_flight",
        "publish_timeout",
        "shutdown_timeout",
        "rules",
        "log_level",
    ),
    "worker": (
        *_BROKER,
        "database_url",
        "rules",
        "delivery_timeout",
        "sweep_interval",
        "watermark_skew",
        "max_lateness",
        "republish_after",
        "retention",
        "batch_size",
        "batch_wait",
        "http_host",
        "metrics_port",
        "publish_timeout",
        "shutdown_timeout",
        "log_level",
    ),
    "api": (
        "database_url",
        "rules",
        "delivery_timeout",
        "republish_after",
        "api_host",
        "api_port",
        "api_token",
        "api_read_token",
        *_HTTP_LIMITS,
        "shutdown_timeout",
        "log_level",
    ),
    "status": ("database_url", "rules", "delivery_timeout"),
    "migrate": ("database_url", "rules", "delivery_timeout"),
    "run": _EVERY,
    "fallback": (
        *_BROKER,
        "rules",
        "fallback_retry_schedule",
        "fallback_prefetch",
        "fallback_circuit_failures",
        "fallback_circuit_open_for",
        "database_url",
        "retention",
        "http_host",
        "metrics_port",
        "publish_timeout",
        "shutdown_timeout",
        "log_level",
    ),
    "check-config": _EVERY,
    # The retry schedule names the delay queues the topology declares.
    "dlq list": (*_BROKER, "fallback_retry_schedule"),
    "dlq replay": (*_BROKER, "fallback_retry_schedule"),
}

_STOPPED = "stopped by SIGTERM or SIGINT"
_BAD_CONFIG = "bad settings, or a rules file that breaks its schema"
_CANNOT_START = "cannot listen on a port, e.g. one already in use (the message says which)"
EXIT_CODES: dict[str, dict[int, str]] = {
    "ingress": {
        0: _STOPPED,
        1: _CANNOT_START + "; with --processes, also: one of the processes died",
        2: _BAD_CONFIG,
    },
    "worker": {0: _STOPPED, 1: _CANNOT_START, 2: _BAD_CONFIG},
    "api": {0: _STOPPED, 1: _CANNOT_START, 2: _BAD_CONFIG},
    "run": {0: _STOPPED, 1: _CANNOT_START, 2: "bad settings or an invalid rules file"},
    "fallback": {
        0: _STOPPED,
        1: _CANNOT_START,
        2: "bad settings, TXMAIL_RULES not set, or an invalid rules file",
    },
    "migrate": {0: "the schema is up to date", 2: _BAD_CONFIG + ", or the store cannot be written"},
    "status": {
        0: "found (or, with --health, Braze's health printed)",
        1: "nothing is known about the id",
        2: _BAD_CONFIG + ", the store cannot be read, or neither an id nor --health (or both)",
    },
    "check-config": {
        0: "valid (warnings, if any, on stderr)",
        1: "problems found, each printed with its place",
        2: "bad settings, or no file named",
    },
    "dlq list": {0: "listed", 1: "RabbitMQ not reachable", 2: _BAD_CONFIG + ", or bad options"},
    "dlq replay": {
        0: "all replayed (or, --dry-run, listed)",
        1: "an ID not found, a message not put back, or RabbitMQ not reachable",
        2: _BAD_CONFIG + ", or bad options",
    },
}


def add_epilogs(parser: argparse.ArgumentParser) -> None:
    """End the help of every command in READS with its variables and exit codes, after
    what its own epilog says."""
    for name, command in commands(parser):
        if name in READS:
            command.epilog = "\n\n".join(filter(None, [command.epilog, epilog(name)]))
            command.formatter_class = argparse.RawDescriptionHelpFormatter


def commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command and sub-command, by its full name ("dlq list")."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield f"{prefix}{name}", command
                yield from commands(command, f"{prefix}{name} ")


def epilog(command: str) -> str:
    width = max(len(f"TXMAIL_{name}") for name in READS[command])
    variables = "\n".join(
        f"  TXMAIL_{name.upper():<{width - 7}}  default: {default(name)}" for name in READS[command]
    )
    exit_codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES[command].items())
    return f"environment:\n{variables}\n\nexit codes:\n{exit_codes}"


def default(name: str) -> str:
    value = Settings.model_fields[name].get_default(call_default_factory=True)
    if value is None or isinstance(value, SecretStr):
        return "unset"
    if isinstance(value, list):
        return ",".join(map(_text, value)) or "empty"
    return _text(value)


def _text(value: object) -> str:
    return format_duration(value) if isinstance(value, timedelta) else str(value)

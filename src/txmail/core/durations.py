"""Durations as people write them: ``90s``, ``10m``, ``2h``, ``1d``, ``1h30m``, ``250ms``.

Used the same way in the environment and in the rules file.
"""

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> timedelta:
    """Parse ``text`` into a timedelta; raise ValueError with an example when it is not one."""
    compact = text.strip().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit, e.g. 90s, 10m, 2h, 1d"
        )
    try:
        return sum((float(n) * _UNITS[u] for n, u in parts), timedelta())
    except OverflowError:
        # pydantic turns only ValueError into a validation error; an overflow would
        # escape it as a 500 or a traceback.
        raise ValueError(
            f"{text!r} is longer than any duration txmail can keep: e.g. 90s, 10m, 2h, 1d"
        ) from None


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of ``value`` in the same syntax: 10 minutes → ``10m``."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def _coerce(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str),
]
"""A pydantic field type that reads ``"10m"`` and writes it back the same way."""


def _longer_than_zero(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_longer_than_zero)]
"""A Duration for a timeout: zero would make everything late at once."""


def _unit_required(value: object) -> object:
    """In the rules file a duration is written with its unit, as in the environment: a
    bare number would be taken as seconds, so ``delivery_timeout = 10`` meant as ten
    minutes would silently become ten seconds."""
    if isinstance(value, bool):  # pydantic would take `true` as one second
        raise ValueError('write a duration with its unit, e.g. "90s" or "10m"')
    if isinstance(value, int | float):
        raise ValueError(f'write a duration with its unit, e.g. "{value}s" or "{value}m"')
    return value


PositiveWrittenDuration = Annotated[PositiveDuration, BeforeValidator(_unit_required)]
"""A timeout in the rules file: "90s", "10m", "2h", "1d", "1h30m"; never a bare number,
and never zero ("must be longer than 0s")."""

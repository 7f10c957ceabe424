"""A request the ingress refuses: its status, a code, a message, and what exactly is wrong."""

import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from txmail.core.http import json_error


@dataclass
class BadRequest(Exception):
    """The request body is not what the contract asks; nothing of it is published."""

    status: int
    error: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)

    def response(self) -> web.Response:
        extra = {"details": self.details} if self.details else {}
        return json_error(self.status, self.error, self.message, **extra)


# The escape of a UTF-16 surrogate, which JSON allows and Python reads even unpaired.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


# Where orjson and the standard library could read one body differently, the standard
# library reads it: orjson turns an integer past 64 bits (19 digits may be) into a
# float, and nests up to 1,024 levels where the standard library stops near 1,000.
_LONG_INTEGER = re.compile(rb"\d{19}")
_FEW_ENOUGH_OPENINGS = 500


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``, or BadRequest saying what is wrong with it.

    orjson reads a body several times faster. It refuses more (anything not UTF-8,
    NaN and Infinity, unpaired surrogates), and whatever it refuses goes the standard
    way, which decides and words the answer as before."""
    if (
        body.count(b"[") + body.count(b"{") < _FEW_ENOUGH_OPENINGS
        and _LONG_INTEGER.search(body) is None
    ):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(body)
    return _parse_json_strictly(body)


def _parse_json_strictly(body: bytes) -> Any:
    try:
        # Decoded strictly first: json.loads(bytes) lets raw unpaired surrogates through
        # (UTF-8 bytes ED A0 80, or in a UTF-16/32 body), and they could not be published.
        text = body.decode(json.detect_encoding(body))
    except UnicodeDecodeError as error:
        raise BadRequest(
            400, "invalid_json", f"body is not UTF-8 (or UTF-16, UTF-32) text: {error}"
        ) from None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise BadRequest(400, "invalid_json", f"body is not valid JSON: {error}") from None
    except RecursionError:
        raise BadRequest(400, "invalid_json", "body is nested too deeply to parse") from None
    if _SURROGATE_ESCAPE.search(text):
        # An unpaired one is not text: it could not be encoded again to be published.
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BadRequest(
                400, "invalid_json", "body holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
            ) from None
    return value


def validation_details(error: ValidationError, index: int | None = None) -> list[dict[str, Any]]:
    """One entry per problem: which item (in an array), which field, what is wrong."""
    where = {} if index is None else {"index": index}
    return [
        {
            **where,
            "field": ".".join(str(p) for p in e["loc"]) or None,
            "message": e["msg"],
        }
        for e in error.errors(include_url=False)
    ]


def broker_unavailable(what: str) -> web.Response:
    return json_error(
        503, "broker_unavailable", f"RabbitMQ did not confirm the {what}; retry later"
    )

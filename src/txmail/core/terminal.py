"""Text from outside, made safe to print on an operator's terminal.

Reasons, ids and bodies come from whoever holds a token; a newline or an ANSI escape
in them could forge lines or recolour the screen of the person reading ``txmail status``.
"""

import re

# C0 controls (newline and tab included), DEL, C1 controls, and the Unicode line and
# paragraph separators that some terminals also break on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with every control character written as a visible escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    # repr gives the familiar spellings (\n, \t, \x1b, \u2028) without the quotes.
    return repr(match.group())[1:-1]

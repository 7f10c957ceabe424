import pytest

from txmail.core.terminal import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("550 5.1.1 user unknown", "550 5.1.1 user unknown"),
        ("line\nforged line", "line\\nforged line"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("tab\there\r", "tab\\there\\r"),
        ("\x9b2J", "\\x9b2J"),
        ("sep\u2028arator", "sep\\u2028arator"),
        ("café ✓", "café ✓"),
    ],
)
def test_control_characters_are_escaped_and_the_rest_kept(raw: str, shown: str) -> None:
    assert printable(raw) == shown

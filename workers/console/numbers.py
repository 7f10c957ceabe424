"""Whole numbers in what a request carries: a query parameter, a session cookie."""

MOST_DIGITS = 18  # far more than any count or time here needs, and always an int64


def whole_number(text: str | None) -> int | None:
    """``text`` as a whole number when it is one written in ASCII digits, else None.

    Not ``text.isdigit()`` then ``int(text)``: isdigit accepts "²", which int refuses, and
    int refuses more than 4300 digits; either was an error 500 where a 400 is due.
    """
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > MOST_DIGITS:
        return None
    return int(text)

"""Recipients as the console shows them: enough to recognise, not enough to copy."""


def masked_email(address: str) -> str:
    """``ada@example.com`` → ``a***@example.com``."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def masked_phone(number: str) -> str:
    """``+15005550006`` → ``+1500***0006``: the country and area, and the last four."""
    if len(number) < 10:
        return f"{number[:3]}***{number[-2:]}"
    return f"{number[:5]}***{number[-4:]}"

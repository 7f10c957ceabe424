"""Point a broker URL somewhere else (at a TcpProxy), keeping its credentials and vhost."""

from urllib.parse import urlsplit, urlunsplit


def via_port(amqp_url: str, port: int) -> str:
    parts = urlsplit(amqp_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def host_and_port(amqp_url: str) -> tuple[str, int]:
    parts = urlsplit(amqp_url)
    return parts.hostname or "127.0.0.1", parts.port or 5672

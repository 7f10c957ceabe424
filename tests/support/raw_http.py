"""One HTTP/1.1 request written byte for byte: for headers no client library would send."""

import asyncio
import json
from typing import Any


async def raw_request(
    port: int, method: str, path: str, headers: bytes = b"", body: bytes = b""
) -> tuple[int, Any]:
    """The status code and JSON body of the answer; ``headers`` are raw header lines."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + headers
        + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = await reader.read()
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)

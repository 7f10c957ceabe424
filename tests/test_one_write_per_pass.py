"""The AMQP connections' writer (txmail.core.one_write_per_pass): the frames written in
one pass of the event loop leave as one TCP segment, in order, a close sends what was
written before it, and aio-pika hands it to aiormq. Against a real TCP server on
loopback, whose segments the kernel counts (TCP_INFO, so Linux only), and RabbitMQ."""

import asyncio
import socket
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import pytest
from aiormq.abc import SSLCerts
from aiormq.connection import SSLContextProvider
from yarl import URL

from tests.support.waiting import wait_until
from txmail.core import one_write_per_pass
from txmail.core.one_write_per_pass import write_once_per_pass

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO is Linux's")

# struct tcp_info (linux/tcp.h): tcpi_segs_out, the segments this socket has sent,
# follows 8 one-byte fields, 24 u32 and 4 u64.
_SEGS_OUT = struct.Struct("=I")
_SEGS_OUT_OFFSET = 8 + 24 * 4 + 4 * 8


def segments_sent(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    (segments,) = _SEGS_OUT.unpack_from(info, _SEGS_OUT_OFFSET)
    return int(segments)


@asynccontextmanager
async def peer() -> AsyncIterator[tuple[int, bytearray, asyncio.Event]]:
    """A TCP server on loopback: its port, what it received, and whether it saw EOF."""
    received, ended = bytearray(), asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
        ended.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], received, ended


async def connected_writer(port: int) -> asyncio.StreamWriter:
    """What aiormq gets from the factory a connection is given."""
    url = URL(f"amqp://127.0.0.1:{port}/")
    factory = write_once_per_pass(aio_pika.Connection(url)).kwargs["transport_factory"]
    tls = SSLContextProvider(
        ssl_context=None,
        ssl_certs=SSLCerts(cert=None, key=None, capath=None, cafile=None, cadata=None, verify=True),
        loop=asyncio.get_running_loop(),
    )
    _, writer = await factory.create(url, ssl_context_provider=tls)
    assert isinstance(writer, asyncio.StreamWriter)
    return writer


async def test_the_frames_of_one_pass_leave_as_one_segment_in_order() -> None:
    frames = [f"frame {i};".encode() for i in range(50)]
    async with peer() as (port, received, _):
        writer = await connected_writer(port)
        before = segments_sent(writer)
        for frame in frames:
            writer.write(frame)
        await wait_until(lambda: len(received) == len(b"".join(frames)), what="every frame")
        assert bytes(received) == b"".join(frames)
        assert segments_sent(writer) - before == 1
        writer.close()


async def test_a_close_sends_what_was_written_before_it() -> None:
    async with peer() as (port, received, ended):
        writer = await connected_writer(port)
        writer.write(b"connection.close")
        writer.close()  # in the same pass as the write
        await asyncio.wait_for(ended.wait(), 5)
        assert bytes(received) == b"connection.close"


async def test_aio_pika_hands_the_writer_to_aiormq(amqp_url: str) -> None:
    """aio-pika passes the factory on to aiormq only as one of its keyword arguments:
    pinned here against a real RabbitMQ, as an upgrade of either could drop it silently."""
    connection = write_once_per_pass(aio_pika.Connection(URL(amqp_url)))
    await connection.connect()
    try:
        assert connection.transport is not None
        opened_by = getattr(connection.transport.connection, "_transport_factory", None)
        assert type(opened_by).__module__ == one_write_per_pass.__name__
    finally:
        await connection.close()

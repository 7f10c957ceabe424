"""AMQP connections that send the frames of one pass of the event loop with one write.

aiormq writes every frame (a publish, an ack) to the socket as soon as its writer task
takes it: one send per frame. On a busy ingress that is a send per postback, each one
waking RabbitMQ, and on loopback each doing the receiver's TCP work in the sender's
time. Here the frames written during one pass of the loop are joined and sent with one
write at the start of the next pass: their order is kept, and a frame waits at most
that one pass.

aiormq takes a ``transport_factory`` for this (aiormq.connection.TransportFactory);
aio-pika does not pass one through, so ``write_once_per_pass`` adds it to the keyword
arguments an aio_pika.Connection hands to aiormq.
"""

import asyncio
from typing import Any

import aio_pika
from aiormq.connection import SSLContextProvider, TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL


class _WriterOncePerPass(asyncio.StreamWriter):
    _waiting: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._waiting is None:
            self._waiting = []
            asyncio.get_running_loop().call_soon(self._send)
        self._waiting.append(bytes(data))

    def _send(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting and not self.transport.is_closing():
            self.transport.write(b"".join(waiting))

    # What was written before a close or an EOF goes out before it.
    def write_eof(self) -> None:
        self._send()
        super().write_eof()

    def close(self) -> None:
        self._send()
        super().close()


class _OncePerPass(TransportFactory):
    """asyncio.open_connection, with the writer above; TLS for ``amqps://`` URLs, as
    aiormq's own factories do."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        tls: SSLContextProvider = kwargs.pop("ssl_context_provider")
        if url.host is None or url.port is None:  # aiormq gives every URL its port
            raise AMQPConnectionError(f"no host and port to connect to in {url}")
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol,
                url.host,
                url.port,
                ssl=await tls.get_context() if url.scheme == "amqps" else None,
                **kwargs,
            )
        except OSError as error:
            raise AMQPConnectionError(*error.args) from error
        return reader, _WriterOncePerPass(transport, protocol, reader, loop)


def write_once_per_pass(connection: aio_pika.Connection) -> aio_pika.Connection:
    """``connection``, not yet connected, made to write its frames once per loop pass."""
    connection.kwargs["transport_factory"] = _OncePerPass()
    return connection

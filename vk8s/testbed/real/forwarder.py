"""A TCP forwarder from a socket bound in the machine's namespace to an address in the testbed's.

The socket is bound before the supervisor leaves the machine's network namespace; a socket keeps
the namespace it was made in, so accepting on it later still serves the machine's loopback while
every connection made from here reaches into the testbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from vk8s.testbed.config import LOOPBACK

_CHUNK = 64 * 1024


def bind_loopback(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(listener: socket.socket, host: str, port: int) -> None:
    """Forwards every connection on `listener` to host:port until cancelled."""

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(relay, sock=listener)
    async with server:
        await server.serve_forever()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()

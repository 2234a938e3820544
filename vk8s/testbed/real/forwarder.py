"""TCP forwarders from sockets bound in the machine's namespace into the testbed's: one to the
apiserver, and an HTTP CONNECT proxy to the addresses inside.

The socket is bound before the supervisor leaves the machine's network namespace; a socket keeps
the namespace it was made in, so accepting on it later still serves the machine's loopback while
every connection made from here reaches into the testbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from ipaddress import IPv4Address, IPv4Network

from vk8s.testbed.config import LOOPBACK

_CHUNK = 64 * 1024
_HEAD_TIMEOUT = 10.0


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


async def serve_connect(listener: socket.socket, allowed: tuple[IPv4Network, ...]) -> None:
    """An HTTP CONNECT proxy into the testbed (kubeconfig `proxy-url`, aiohttp `proxy=`), so a
    client on the machine reaches a vNode's API server at its own address and its certificate
    still matches. Only addresses of the testbed's networks are reachable through it."""

    async def tunnel(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(client_reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
            host, port = connect_target(head.decode("latin-1").split("\r\n", 1)[0], allowed)
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except (ProxyRefused, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError) as exc:
            with contextlib.suppress(ConnectionError, OSError):
                client_writer.write(f"HTTP/1.1 {_status(exc)}\r\ncontent-length: 0\r\n\r\n".encode())
                client_writer.close()
            return
        client_writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(tunnel, sock=listener)
    async with server:
        await server.serve_forever()


class ProxyRefused(Exception):
    pass


def connect_target(request_line: str, allowed: tuple[IPv4Network, ...]) -> tuple[str, int]:
    """`CONNECT 10.250.0.3:6443 HTTP/1.1` -> ("10.250.0.3", 6443), for allowed addresses only."""
    method, _, rest = request_line.partition(" ")
    target = rest.split(" ", 1)[0]
    host, _, port = target.rpartition(":")
    if method != "CONNECT" or not port.isdigit():
        raise ProxyRefused(f"not a CONNECT request: {request_line[:80]!r}")
    try:
        address = IPv4Address(host)
    except ValueError:
        raise ProxyRefused(f"{host!r} is not an IPv4 address") from None
    if not any(address in network for network in allowed):
        raise ProxyRefused(f"{address} is outside the testbed's networks")
    return str(address), int(port)


def _status(exc: Exception) -> str:
    if isinstance(exc, ProxyRefused):
        return "403 Forbidden"
    return "502 Bad Gateway" if isinstance(exc, OSError) else "400 Bad Request"

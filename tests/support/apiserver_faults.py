"""A TLS proxy in front of the testbed's kube-apiserver that, for a period, answers 429 and 500,
resets connections and answers slowly: what an overloaded or restarting apiserver does to its
clients. It terminates TLS with the apiserver's own serving certificate (so the services'
kubeconfig differs only in its server URL) and goes on to the apiserver as the testbed's admin.

Outside a fault period every connection is passed through. When a period starts, the open
connections are reset (watches and pooled connections break, as in an apiserver rollout); during
it, each new connection's first request gets the next fault of `FAULTS` in turn, and the
connections passed through are reset after `FAULTY_LIFETIME_S`, so long ones meet faults too.
The proxy runs its own event loop in a thread: it serves whatever the tests' loops do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml

from vk8s.testbed.config import LOOPBACK

Fault = Literal["429", "500", "reset", "slow", "pass"]
FAULTS: tuple[Fault, ...] = ("429", "500", "reset", "slow", "pass")
SLOW_S = 3.0
FAULTY_LIFETIME_S = 2.0
_REASONS = {"429": (429, "Too Many Requests", "TooManyRequests"), "500": (500, "Internal Server Error", "InternalError")}


def _status_response(fault: Fault) -> bytes:
    code, text, reason = _REASONS[fault]
    body = json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "injected by the test's proxy", "reason": reason, "code": code}
    ).encode()
    head = (
        f"HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Retry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes with a TCP RST (no TLS close, no FIN): what a crashed peer looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ApiserverFaultProxy:
    def __init__(self, upstream_url: str, pki: Path):
        """`upstream_url`: the apiserver's https URL; `pki`: the testbed's PKI directory."""
        upstream = urlsplit(upstream_url)
        assert upstream.scheme == "https" and upstream.hostname and upstream.port, upstream_url
        self._upstream = (upstream.hostname, upstream.port)
        self._server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_tls.load_cert_chain(pki / "apiserver.crt", pki / "apiserver.key")
        # HTTP/1.1 only: each request's connection is the unit a fault applies to.
        self._server_tls.set_alpn_protocols(["http/1.1"])
        self._client_tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._client_tls.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        self._client_tls.set_alpn_protocols(["http/1.1"])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="apiserver-fault-proxy", daemon=True)
        self._server: asyncio.Server
        # The clients' ends of the open connections.
        self._open: set[asyncio.StreamWriter] = set()
        self._faulty_until = 0.0
        self._turn = 0
        self.injected: Counter[Fault] = Counter()
        self.port: int | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "the proxy is not started"
        return f"https://{LOOPBACK}:{self.port}"

    def start(self) -> ApiserverFaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, LOOPBACK, 0, ssl=self._server_tls), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def kubeconfig(self, source: Path, target: Path) -> Path:
        """`source` (a testbed kubeconfig) with its server replaced by this proxy."""
        document = yaml.safe_load(source.read_text())
        for cluster in document["clusters"]:
            cluster["cluster"]["server"] = self.url
        target.touch(mode=0o600)
        target.write_text(yaml.safe_dump(document, sort_keys=False))
        return target

    def inject(self, seconds: float) -> None:
        """Starts a fault period of `seconds` now (from any thread)."""
        self._faulty_until = time.monotonic() + seconds
        self._loop.call_soon_threadsafe(self._reset_all)

    def _faulty(self) -> bool:
        return time.monotonic() < self._faulty_until

    def _reset_all(self) -> None:
        for writer in list(self._open):
            _reset(writer)
            self.injected["reset"] += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            fault: Fault = "pass"
            if self._faulty():
                fault = FAULTS[self._turn % len(FAULTS)]
                self._turn += 1
                self.injected[fault] += 1
            if fault in _REASONS:
                writer.write(_status_response(fault))
                await writer.drain()
                return
            if fault == "reset":
                _reset(writer)
                return
            if fault == "slow":
                await asyncio.sleep(SLOW_S)
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream, ssl=self._client_tls)
            upstream_writer.write(head)
            piping = asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
            if self._faulty():
                try:
                    await asyncio.wait_for(piping, FAULTY_LIFETIME_S)
                except TimeoutError:
                    _reset(writer)
                    self.injected["reset"] += 1
            else:
                await piping
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            self._open.discard(writer)
            for end in (writer, upstream_writer):
                if end is not None:
                    end.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

"""Commands inside vNode pods over the API server's `pods/exec` (websocket, v4.channel.k8s.io),
with their exit code, stdout and stderr."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.stream import WsApiClient

STDOUT, STDERR, ERROR = 1, 2, 3


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str

    def summary(self) -> str:
        """The last line of stderr (else stdout), whole: shortened only once redacted (bootstrap logic)."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return text[-1] if text else f"exit code {self.exit_code}"


class ExecInterrupted(Exception):
    """The exec's connection went before the command's exit status came: a failed try."""


class ExecUnavailable(Exception):
    """The API server did not start the command: it throttled (429) or failed (5xx) the exec, or
    the connection went before the websocket opened. Nothing ran on the node."""


def exit_code(status: str) -> int:
    """The exit code from the error channel's Status object. The API server always ends an exec
    with one: none means the connection went mid-command, which may have run in part."""
    if not status:
        raise ExecInterrupted("the exec ended without its exit status: the connection went mid-command")
    data = json.loads(status)
    if data.get("status") == "Success":
        return 0
    for cause in (data.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    # Runtimes that only say it in the message (kwok: "... exit status 3").
    if match := re.search(r"exit status (\d+)", data.get("message") or ""):
        return int(match.group(1))
    raise RuntimeError(data.get("message") or status)


class NodeCommands(Protocol):
    """Runs a command in a vNode pod (NodeExec does it, over exec)."""

    async def run(self, namespace: str, pod: str, argv: list[str]) -> ExecResult: ...


class NodeExec:
    def __init__(self, api: client.ApiClient, container: str, timeout_s: float):
        self._configuration = api.configuration
        self._container = container
        self._timeout_s = timeout_s

    async def run(self, namespace: str, pod: str, argv: list[str]) -> ExecResult:
        async with WsApiClient(configuration=self._configuration) as ws:
            response = await client.CoreV1Api(ws).connect_get_namespaced_pod_exec_without_preload_content(
                pod,
                namespace,
                container=self._container,
                command=argv,
                stdout=True,
                stderr=True,
                stdin=False,
                tty=False,
            )
            channels: dict[int, list[str]] = {STDOUT: [], STDERR: [], ERROR: []}
            async with asyncio.timeout(self._timeout_s), contextlib.AsyncExitStack() as stack:
                try:
                    socket = await stack.enter_async_context(response)  # the websocket handshake
                except aiohttp.WSServerHandshakeError as error:
                    if error.status != 429 and error.status < 500:
                        raise
                    raise ExecUnavailable(f"{type(error).__name__}: {error}") from error
                except aiohttp.ClientConnectionError as error:
                    raise ExecUnavailable(f"{type(error).__name__}: {error}") from error
                # Through WsApiClient the call answers a websocket, not the ClientResponse it is typed with.
                async for message in socket:  # type: ignore[attr-defined]
                    data = message.data if isinstance(message.data, bytes) else str(message.data).encode()
                    if len(data) > 1 and data[0] in channels:
                        channels[data[0]].append(data[1:].decode(errors="replace"))
        return ExecResult(exit_code("".join(channels[ERROR])), "".join(channels[STDOUT]), "".join(channels[STDERR]))

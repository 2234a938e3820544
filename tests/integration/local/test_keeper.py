"""The local stack runs each service under a keeper, as a Deployment would: a service process that
is killed comes back (with backoff, logged), and stopping the stack stops it for good. Against a
real nats-server and the testbed's kube-apiserver, with the real gateway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vk8s.local import stack

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while (result := probe()) is None or result is False:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
    return result


def keeper_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("keeper"):
            lines.append(record)
    return lines


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] not in "ZX"


def test_a_service_failing_at_start_up_is_reported_at_once_not_restarted_until_the_timeout(tmp_path: Path) -> None:
    """Under its keeper a failing service never exits for good: `vk8s up` reads the keeper's log."""
    with (tmp_path / "broken.log").open("wb") as log:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "vk8s.local.keeper", "broken", "--", sys.executable, "-c", "raise SystemExit('no config')"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="service broken exited during start-up") as failed:
            stack.wait_ready({"broken": 9}, {"broken": keeper.pid}, tmp_path, timeout_s=60)
    finally:
        stack.stop_pids([keeper.pid])
        keeper.wait()
    assert time.monotonic() - started < 20
    assert "no config" in str(failed.value)


async def test_a_killed_service_comes_back_and_a_stopped_one_does_not(
    nats_url: str, kube_config_path: Path, namespace: str, tmp_path: Path
) -> None:
    environment = stack.ServiceEnvironment(
        nats_url,
        str(kube_config_path),
        {"VK8S_GATEWAY_NAMESPACE": namespace, "VK8S_GATEWAY_KV_BUCKET": f"keeper-{namespace}"},
    )
    pids, ports = stack.start_services(environment, tmp_path, ("gateway",))
    log = tmp_path / "gateway.log"
    try:
        stack.wait_ready(ports, pids, tmp_path, timeout_s=120)
        [first] = keeper_lines(log)
        os.kill(first["pid"], signal.SIGKILL)

        exited = eventually(
            lambda: next((line for line in keeper_lines(log) if line["event"].startswith("Service process exited")), None),
            "the keeper to log the exit",
        )
        again = eventually(
            lambda: next((line for line in keeper_lines(log)[2:] if line["event"] == "Started service process"), None),
            "the service to be started again",
        )
        eventually(lambda: ready(ports["gateway"]), "the restarted gateway to be ready", timeout=120)
    finally:
        stack.stop_pids(pids)

    assert (exited["exit_code"], exited["restart"], exited["restart_in_s"]) == (-signal.SIGKILL, 1, 1.0)
    assert again["pid"] != first["pid"]
    assert not alive(pids["gateway"]) and not alive(again["pid"])
    assert keeper_lines(log)[-1]["event"] == "Service process stopped"

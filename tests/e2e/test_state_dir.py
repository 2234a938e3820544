"""Two stacks side by side (say, a user's and the test suite's): `vk8s up --state-dir` and
`VK8S_STATE_DIR` keep each one's NATS, testbed, logs and stack.json apart, and `vk8s down` with the
same directory stops that stack alone."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.conftest import ROOT, run
from vk8s.local import stack

UP = ["up", "--runtime", "kwok", "--nodes", "1", "--no-demo", "--detach"]


def vk8s(*args: str, env: dict[str, str]) -> Any:
    result = run([str(ROOT / ".venv/bin/vk8s"), *args], env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def services_ready(root: Path) -> bool:
    info = json.loads((root / "stack.json").read_text())
    for port in info["service_ports"].values():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            if response.status != 200:
                return False
    return True


def test_two_stacks_run_side_by_side_and_stop_one_by_one(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    env = {key: value for key, value in os.environ.items() if key != "VK8S_STATE_DIR"}
    try:
        up = vk8s(*UP, "--state-dir", str(first), env=env)
        assert f"vk8s down --state-dir {first}" in up.stdout
        vk8s(*UP, env={**env, "VK8S_STATE_DIR": str(second)})
        infos = [stack.read_info(stack.StackLayout(root)) for root in (first, second)]
        assert infos[0] is not None and infos[1] is not None, infos
        assert infos[0].nats_url != infos[1].nats_url and infos[0].kubeconfig != infos[1].kubeconfig
        assert services_ready(first) and services_ready(second)

        assert "stopped" in vk8s("down", "--state-dir", str(first), env=env).stdout
        assert stack.read_info(stack.StackLayout(first)) is None
        assert services_ready(second), "stopping the first stack left the second running"
    finally:
        for root in (first, second):
            stack.down(stack.StackLayout(root))
    assert stack.read_info(stack.StackLayout(second)) is None

"""Testbed down stops every process of its sandboxes, also one no pid file records (its sandbox was
removed while a successor on the same volume was starting it): none may outlive the testbed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vk8s.testbed.node_sim.processes import start_time
from vk8s.testbed.node_sim.sandbox import stop_every_sandbox

SLEEPER = "import sys, time; time.sleep(600)"


def test_an_unrecorded_process_naming_a_sandbox_goes_down_with_the_testbed(tmp_path: Path) -> None:
    sandboxes, elsewhere = tmp_path / "sandboxes", tmp_path / "elsewhere"
    config = sandboxes / "tenant" / "c-master-0" / "pvc-1" / "var" / "lib" / "node-sim" / "kwok.yaml"
    config.parent.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, "-c", SLEEPER, f"--config={config}"], start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", SLEEPER, f"--config={elsewhere}/kwok.yaml"], start_new_session=True)
    try:
        stop_every_sandbox(sandboxes)
        assert orphan.wait(timeout=15) is not None
        assert start_time(bystander.pid) is not None, "a process naming no sandbox is not ours to stop"
    finally:
        for process in (orphan, bystander):
            process.kill()
            process.wait()

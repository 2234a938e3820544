"""Seconds from `vk8s testbed up --detach` to a ready testbed (binaries already built), per run; on
the real tier also the memory of each host node and the time for a pod to Running on one.

    .venv/bin/python bench/testbed_startup.py [--runs 3] [--nodes 4] [--runtime kwok|real]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vk8s.images.builders import toolbox_ref
from vk8s.testbed.config import StateLayout
from vk8s.testbed.lifecycle import read_ready


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def node_memory(state: Path) -> dict[str, float]:
    """RSS of each real node's containerd, kubelet and GPU plugin (MiB)."""
    ready = read_ready(StateLayout(state))
    assert ready is not None
    per_node: dict[str, float] = {}
    for name, pid in ready.components.items():
        if name.startswith("gpu-node-"):
            node = name.rsplit("-", 1)[0].removesuffix("-gpu")
            per_node[node] = per_node.get(node, 0.0) + rss_mib(pid)
    return per_node


def pod_to_running(kubectl: list[str]) -> float:
    name = f"bench-{os.getpid()}"
    overrides = json.dumps({"spec": {"nodeName": "gpu-node-0", "terminationGracePeriodSeconds": 1}})
    started = time.perf_counter()
    subprocess.run([*kubectl, "run", name, f"--image={toolbox_ref()}", "--restart=Never", f"--overrides={overrides}",
                    "--command", "--", "sleep", "600"], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*kubectl, "wait", "--for=jsonpath={.status.phase}=Running", f"pod/{name}", "--timeout=120s"],
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--runtime", choices=["kwok", "real"], default="kwok")
    args = parser.parse_args()
    vk8s = [str(Path(sys.executable).with_name("vk8s")), "testbed"]
    # Builds on first use, so the runs below measure a warm start only.
    build = Path(__file__).resolve().parents[1] / "deploy" / "testbed" / "build.sh"
    subprocess.run(["bash", str(build)], check=True, stdout=subprocess.DEVNULL)
    seconds, pods = [], []
    with tempfile.TemporaryDirectory(prefix="vk8s-bench-") as scratch:
        state = Path(scratch) / "testbed"
        for run in range(1, args.runs + 1):
            started = time.perf_counter()
            up = [*vk8s, "up", "--detach", f"--nodes={args.nodes}", f"--runtime={args.runtime}", f"--state-dir={state}"]
            subprocess.run(up, check=True, capture_output=True)
            seconds.append(time.perf_counter() - started)
            line = f"run {run}: ready in {seconds[-1]:.2f} s"
            if args.runtime == "real":
                kubectl = [str(Path(sys.executable).with_name("kubectl")), f"--kubeconfig={state / 'kubeconfig'}"]
                memory = node_memory(state)
                pods.append(pod_to_running(kubectl))
                line += f"; pod to Running {pods[-1]:.2f} s; node RSS " + ", ".join(
                    f"{node} {mib:.0f} MiB" for node, mib in sorted(memory.items())
                )
            subprocess.run([*vk8s, "down", f"--state-dir={state}"], check=True, capture_output=True)
            print(line, flush=True)
    summary = f"warm start, {args.nodes} {args.runtime} nodes: median {statistics.median(seconds):.2f} s"
    summary += f", max {max(seconds):.2f} s"
    if pods:
        summary += f"; pod to Running median {statistics.median(pods):.2f} s"
    print(summary)


if __name__ == "__main__":
    main()

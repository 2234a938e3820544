"""What the testbed's sandbox controller needs from the vNode simulation: the environment of a
pod's exec sandbox, and cleaning up after a pod or its volume goes."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vk8s.testbed.config import GPU_PRODUCT_LABEL, GPU_RESOURCE, REPO_ROOT
from vk8s.testbed.node_sim import processes
from vk8s.testbed.node_sim.env import INNER_ETCD_PREFIX
from vk8s.testbed.node_sim.etcd import delete_etcd_prefix
from vk8s.testbed.node_sim.state import STATE_FILE
from vk8s.testbed.node_sim.tools import gpu_uuid

SHIMS = Path(__file__).resolve().parent / "bin"
NODE_SCRIPTS = REPO_ROOT / "deploy" / "images" / "node"
CLAIM_PREFIX = "pvc-"


# Fault injection for tests: a host node with this annotation has a kernel without the named
# module, so `vk8s-node prepare` in a vNode on it fails as it would on such a host.
MISSING_MODULE_ANNOTATION = "testbed.vk8s.skt.co.kr/missing-kernel-module"


@dataclass(frozen=True)
class NodeSim:
    """The testbed that simulated vNodes run their inner control planes on."""

    bin_dir: Path
    etcd_url: str

    def environment(self, pod: dict[str, Any], node: dict[str, Any], directory: Path, key: str) -> dict[str, str]:
        """Variables for `vk8s-node` and the shims, on top of the sandbox's own."""
        capacity = (node.get("status") or {}).get("capacity") or {}
        labels = node["metadata"].get("labels") or {}
        gpus = sum(
            int(((container.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE, 0))
            for container in pod["spec"]["containers"]
        )
        # kwok does not track which of a host's GPUs a pod got; ids are deterministic stand-ins.
        ids = ",".join(gpu_uuid(node["metadata"]["name"], index) for index in range(gpus))
        env = {
            "VK8S_ROOT": str(directory),
            "VK8S_SANDBOX_KEY": f"{pod['metadata']['namespace']}/{key}",
            "VK8S_TESTBED_BIN": str(self.bin_dir),
            "VK8S_TESTBED_ETCD": self.etcd_url,
            "VK8S_TESTBED_PYTHON": sys.executable,
            "VK8S_HOST_CPU": str(capacity.get("cpu", "")),
            "VK8S_HOST_MEMORY": str(capacity.get("memory", "")),
            "VK8S_HOST_GPUS": str(capacity.get(GPU_RESOURCE, "0")),
            "VK8S_GPU_PRODUCT": labels.get(GPU_PRODUCT_LABEL, "NVIDIA GPU"),
        }
        if missing := (node["metadata"].get("annotations") or {}).get(MISSING_MODULE_ANNOTATION):
            env["VK8S_SIM_MISSING_MODULES"] = missing
        if ids:
            # As the host's NVIDIA device plugin hands a container its GPUs.
            env["VK8S_GPU_IDS"] = env["NVIDIA_VISIBLE_DEVICES"] = ids
        return env

    @staticmethod
    def path_prefix() -> str:
        """The shims, then vk8s-node, then this Python's bin (kubectl) come before the host's tools."""
        return f"{SHIMS}:{NODE_SCRIPTS}:{Path(sys.executable).parent}"

    def remove_volume(self, directory: Path, key: str) -> None:
        """The vNode's volume is gone: its processes, its inner cluster's etcd keys and its files."""
        stop_processes(directory)
        if (directory / "var" / "lib" / "node-sim" / STATE_FILE).exists():
            delete_etcd_prefix(self.etcd_url, f"{INNER_ETCD_PREFIX}/{key}")
        shutil.rmtree(directory, ignore_errors=True)


def stop_processes(directory: Path) -> list[str]:
    """The pod is gone: so are the processes its sandbox started, and its /run."""
    stopped = processes.stop_all(directory / "run")
    shutil.rmtree(directory / "run", ignore_errors=True)
    return stopped


def stop_every_sandbox(root: Path) -> None:
    """Every process any sandbox under `root` started (the testbed is going down): those recorded,
    then any other whose command line still names a sandbox's files."""
    for run_dir in root.glob("*/*/run"):
        processes.stop_all(run_dir)
    processes.stop_naming(root)

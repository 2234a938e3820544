"""What `kubeadm init` saved about a simulated master's inner control plane (light to import:
`systemctl is-active kubelet` reads it on every `vk8s-node state`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vk8s.testbed.node_sim import processes
from vk8s.testbed.node_sim.env import NodeEnv

STATE_FILE = "cluster.json"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Networking:
    cluster_name: str = "kubernetes"
    pod_subnet: str | None = None
    service_subnet: str = "10.96.0.0/12"
    dns_domain: str = "cluster.local"


@dataclass
class ClusterState:
    """Saved in the sandbox at init; everything a restart needs."""

    node_name: str
    kubernetes_version: str
    etcd_prefix: str
    networking: Networking
    ports: dict[str, int]
    processes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['apiserver']}"

    def save(self, env: NodeEnv) -> None:
        path = state_path(env)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, env: NodeEnv) -> ClusterState | None:
        try:
            data = json.loads(state_path(env).read_text())
        except FileNotFoundError:
            return None
        data["networking"] = Networking(**data["networking"])
        return cls(**data)


def state_path(env: NodeEnv) -> Path:
    return env.sim_dir / STATE_FILE


def all_running(env: NodeEnv, state: ClusterState) -> bool:
    return all(processes.running(env.run_dir, spec["name"]) is not None for spec in state.processes)

"""What a testbed is made of: the simulated fleet, its state directory layout and its ports."""

from __future__ import annotations

import hashlib
import os
import socket
from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "deploy" / "testbed" / "build.sh"
VERSIONS_FILE = REPO_ROOT / "deploy" / "testbed" / "versions.env"
CRDS_DIR = REPO_ROOT / "deploy" / "crds"

LOOPBACK = "127.0.0.1"
# kwok manages only nodes carrying this annotation, so real nodes of a shared cluster stay untouched.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_TOPOLOGY_LABEL = "vk8s.skt.co.kr/gpu-topology"
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
SANDBOX_ANNOTATION = "vk8s.skt.co.kr/sandbox"
# Seconds one component may take to serve, and the whole start; a busy machine needs far more
# than the usual few seconds.
START_TIMEOUT = 120.0
READY_TIMEOUT = 300.0


def state_root() -> Path:
    """Where `vk8s up` and `vk8s testbed` keep their state: `$VK8S_STATE_DIR`, one meaning for both."""
    return Path(os.environ.get("VK8S_STATE_DIR") or Path.home() / ".local" / "state" / "vk8s").expanduser()


def default_state_dir() -> Path:
    """The testbed's own directory: the one `vk8s up` starts its testbed in."""
    return state_root() / "testbed"


def cache_dir() -> Path:
    """The machine-level cache build.sh fills (binaries and its Go module cache)."""
    return Path(os.environ.get("VK8S_CACHE_DIR") or Path.home() / ".cache" / "vk8s")


def pinned_versions() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in VERSIONS_FILE.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.lstrip().startswith("#")}


Runtime = Literal["kwok", "real"]

# The real tier's addresses exist only inside the testbed's network namespace, on one bridge:
# nodes, host pods (the ipmanager's default host pod CIDR) and the vNode pool the ipmanager hands out.
NODE_NETWORK = IPv4Network("10.243.0.0/24")
HOST_POD_NETWORK = IPv4Network("10.244.0.0/16")
VNODE_IP_POOL = IPv4Network("10.250.0.0/22")
# Each real node is a kubelet and a containerd on this machine's cores.
MAX_REAL_NODES = 8


class FleetSpec(BaseModel):
    """The host nodes: identical GPU machines spread over zones, simulated by kwok or real kubelets."""

    model_config = ConfigDict(frozen=True)

    runtime: Runtime = "kwok"
    # Kubernetes releases (e.g. "1.36.3") whose vNode images each real node imports.
    vnode_images: tuple[str, ...] = ()
    nodes: int = Field(default=4, ge=0, le=500)
    gpus_per_node: int = Field(default=8, ge=0, le=64)
    gpu_model: str = "NVIDIA-A100-SXM4-80GB"
    gpu_topology: str = "nvlink"
    zones: tuple[str, ...] = ("zone-a", "zone-b")
    region: str = "vk8s-local"
    cpu: str = "96"
    memory: str = "1Ti"
    max_pods: int = 110

    @model_validator(mode="after")
    def _real_fleet_fits(self) -> FleetSpec:
        if self.runtime == "real" and self.nodes > MAX_REAL_NODES:
            raise ValueError(f"--nodes {self.nodes}: the real tier runs at most {MAX_REAL_NODES} nodes on one machine")
        return self

    def node_names(self) -> list[str]:
        return [f"gpu-node-{index}" for index in range(self.nodes)]

    def node_address(self, index: int) -> str:
        """A real node's InternalIP on the testbed bridge; the first ten addresses are the gateway's."""
        return str(NODE_NETWORK[10 + index])

    def pod_range(self, index: int) -> IPv4Network:
        """Where a real node's ordinary pods get their addresses: one /24 of the host pod network each."""
        return list(HOST_POD_NETWORK.subnets(new_prefix=24))[1 + index]


class Ports(BaseModel):
    """Loopback ports of one testbed, picked free at start."""

    model_config = ConfigDict(frozen=True)

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick_free(cls) -> Ports:
        names = list(cls.model_fields)
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in names]
        try:
            for sock in sockets:
                sock.bind((LOOPBACK, 0))
            return cls(**{name: sock.getsockname()[1] for name, sock in zip(names, sockets, strict=True)})
        finally:
            for sock in sockets:
                sock.close()


class ReadyInfo(BaseModel):
    """Written to the ready file once every component serves; `status` and the fixtures read it."""

    model_config = ConfigDict(frozen=True)

    supervisor_pid: int
    kubeconfig: str
    server: str
    sandbox_root: str
    # The real tier's HTTP CONNECT proxy to addresses inside the testbed (vNode API servers).
    proxy_url: str | None = None
    ports: Ports
    fleet: FleetSpec
    components: dict[str, int]
    started_seconds: float


class StateLayout:
    """Where everything of one testbed lives; `down` removes the whole directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()

    @property
    def id(self) -> str:
        """Short and stable per state directory: names the testbed's cgroups on the machine."""
        return hashlib.sha256(str(self.root).encode()).hexdigest()[:10]

    @property
    def pid_file(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def ready_file(self) -> Path:
        return self.root / "ready.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def component_kubeconfigs(self) -> Path:
        return self.root / "kubeconfigs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def sandboxes(self) -> Path:
        return self.root / "sandboxes"

    @property
    def kwok_config(self) -> Path:
        return self.root / "kwok.yaml"

    @property
    def kwok_home(self) -> Path:
        # kwok also reads ~/.kwok/kwok.yaml; a HOME of its own keeps a user's file out.
        return self.root / "kwok-home"

    @property
    def real_nodes(self) -> Path:
        """Per real node: containerd's root and state, the kubelet's root, its logs, configs and certs."""
        return self.root / "nodes"

    @property
    def volumes(self) -> Path:
        """Local persistent volumes of the real tier, one directory per claim."""
        return self.root / "volumes"

    @property
    def supervisor_log(self) -> Path:
        # Beside logs/, not in it: the detached supervisor writes here before it clears old state.
        return self.root / "supervisor.log"

"""What a shim knows about the vNode it runs in: the sandbox's environment, set by the testbed."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

# Every inner cluster keeps its objects under <prefix>/<namespace>/<pvc-uid or pod> in the testbed's etcd.
INNER_ETCD_PREFIX = "/vk8s-inner"


class SimError(RuntimeError):
    """A failure a shim reports as one line on stderr and a non-zero exit."""


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SimError(f"{name} is not set: this tool only runs in a testbed exec sandbox")
    return value


@dataclass(frozen=True)
class NodeEnv:
    root: Path
    # <namespace>/<pvc-uid or pod>: names the inner cluster's etcd prefix.
    key: str
    # The vNode's hostname, which kubeadm uses as the node name.
    hostname: str
    testbed_bin: Path
    etcd_url: str

    @classmethod
    def from_environ(cls) -> NodeEnv:
        root = Path(_require("VK8S_ROOT"))
        hostname = _require("VK8S_POD_NAME")
        key = os.environ.get("VK8S_SANDBOX_KEY") or f"{os.environ.get('VK8S_POD_NAMESPACE', 'default')}/{hostname}"
        return cls(
            root=root,
            key=key,
            hostname=hostname,
            testbed_bin=Path(_require("VK8S_TESTBED_BIN")),
            etcd_url=_require("VK8S_TESTBED_ETCD"),
        )

    @property
    def kubernetes_dir(self) -> Path:
        return self.root / "etc" / "kubernetes"

    @property
    def admin_conf(self) -> Path:
        return self.kubernetes_dir / "admin.conf"

    @property
    def kubelet_conf(self) -> Path:
        return self.kubernetes_dir / "kubelet.conf"

    @property
    def kubelet_dropin(self) -> Path:
        return self.kubernetes_dir / "kubelet.conf.d" / "50-vk8s-node.conf"

    @property
    def kubelet_pki(self) -> Path:
        return self.root / "var" / "lib" / "kubelet" / "pki"

    @property
    def gpu_config(self) -> Path:
        return self.root / "etc" / "vk8s" / "gpus.json"

    @property
    def sim_dir(self) -> Path:
        """State of the simulation that a real node keeps elsewhere (on its volume)."""
        return self.root / "var" / "lib" / "node-sim"

    @property
    def run_dir(self) -> Path:
        """Like a container's /run: pid files and unit states; cleared when the pod goes."""
        return self.root / "run"

    @property
    def etcd_prefix(self) -> str:
        return f"{INNER_ETCD_PREFIX}/{self.key}"

    @property
    def kubeadm(self) -> Path:
        return self.testbed_bin / "kubeadm"


def fail(message: str) -> None:
    print(f"{Path(sys.argv[0]).name}: {message}", file=sys.stderr)
    raise SystemExit(1)

"""One real host node: a containerd, a kubelet and a fake-GPU device plugin in a mount namespace of
their own, whose /var/lib/kubelet and /var/log/pods are the node's directories (the kubelet ignores
`--root-dir` for the device-plugin socket and some certificate paths, and cleans /var/log/pods of
pods it does not know: nodes sharing them would step on each other)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vk8s.testbed import components
from vk8s.testbed.certs import KeyPair, Pki, write_node_credentials
from vk8s.testbed.config import GPU_RESOURCE, HOST_POD_NETWORK, VNODE_IP_POOL, FleetSpec, StateLayout
from vk8s.testbed.errors import TestbedError
from vk8s.testbed.processes import ProcessSpec
from vk8s.testbed.real.namespaces import BRIDGE, CGROUP_ROOT, SOCKET_DIR, gateway

CNI_PLUGIN_DIR = Path("/usr/lib/cni")
# Inside the node's mount namespace these are the node's own directories.
KUBELET_ROOT = Path("/var/lib/kubelet")
POD_LOGS = Path("/var/log/pods")
CONTAINER_LOGS = Path("/var/log/containers")
IPAM_PLUGIN = "vk8s-ipam"
CGROUP_PREFIX = "vk8s-testbed"


def cgroup_root(layout: StateLayout) -> str:
    """The testbed's cgroup in every hierarchy: its id keeps two testbeds apart, `sweep` finds it."""
    return f"/{CGROUP_PREFIX}-{layout.id}"


@dataclass(frozen=True)
class RealNode:
    name: str
    index: int
    address: str
    directory: Path

    @property
    def containerd_socket(self) -> Path:
        return SOCKET_DIR / self.name / "containerd.sock"

    @property
    def gpu_devices(self) -> Path:
        return self.directory / "gpus"


def real_nodes(layout: StateLayout, fleet: FleetSpec) -> list[RealNode]:
    return [
        RealNode(name, index, fleet.node_address(index), layout.real_nodes / name)
        for index, name in enumerate(fleet.node_names())
    ]


def prepare(
    node: RealNode, layout: StateLayout, fleet: FleetSpec, pki: Pki, *, server: str, cni_bin: Path, pause_image: str
) -> None:
    """Writes the node's configs and credentials and makes its mount namespace."""
    for sub in ("kubelet", "pod-logs", "container-logs", "containerd", "cni", "gpus", "runc"):
        (node.directory / sub).mkdir(parents=True, exist_ok=True)
    client, serving = write_node_credentials(pki, node.directory / "pki", node.name, node.address)
    components.write_kubeconfig(
        node.directory / "kubelet.conf", server=server, ca=pki.ca.cert, user=f"system:node:{node.name}",
        credentials=client,
    )  # fmt: skip
    (node.directory / "containerd.toml").write_text(containerd_config(node, cni_bin, pause_image))
    (node.directory / "cni" / "10-vk8s.conflist").write_text(
        json.dumps(cni_config(node, fleet, ca=pki.ca.cert, client=client, server=server), indent=2)
    )
    (node.directory / "kubelet.yaml").write_text(
        yaml.safe_dump(kubelet_config(node, layout, pki, serving.cert, serving.key), sort_keys=False)
    )
    (node.directory / "resolv.conf").write_text("")
    make_cgroup(f"{cgroup_root(layout)}/{node.name}")


def make_cgroup(path: str) -> None:
    """The kubelet wants its cgroup root to exist in every hierarchy (v1; the unified one it ignores)."""
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        if hierarchy.name == "unified":
            continue
        parent = hierarchy
        for part in path.strip("/").split("/"):
            child = parent / part
            child.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                # A new cpuset starts with no CPUs or memory nodes; nothing could run in it.
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    if not (child / knob).read_text().strip():
                        (child / knob).write_text((parent / knob).read_text())
            parent = child


def containerd_config(node: RealNode, cni_bin: Path, pause_image: str) -> str:
    root = node.directory / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, and runc fails raising a score.
    return f"""version = 2
root = "{root / 'root'}"
state = "{root / 'state'}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
]

[grpc]
  address = "{node.containerd_socket}"

[ttrpc]
  address = "{node.containerd_socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / 'opt'}"

[{cri}]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  tolerate_missing_hugepages_controller = true
  enable_unprivileged_ports = true
  # Pod network namespaces are pinned under the node's state, never in the machine's /run/netns.
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  discard_unpacked_layers = true

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{node.directory / 'runc'}"

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{node.directory / 'cni'}"
"""


def cni_config(node: RealNode, fleet: FleetSpec, *, ca: Path, client: KeyPair, server: str) -> dict[str, Any]:
    """The bridge plugin on the testbed bridge; addresses from the project's IPAM plugin."""
    pod_range = fleet.pod_range(node.index)
    return {
        "cniVersion": "1.0.0",
        "name": "vk8s-testbed",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                # The supervisor gave the bridge its gateway addresses already.
                "isGateway": False,
                "hairpinMode": True,
                "ipam": {
                    "type": IPAM_PLUGIN,
                    # The kubelet's identity: the Node authorizer lets it read the pods bound to it.
                    "server": server,
                    "ca": str(ca),
                    "cert": str(client.cert),
                    "key": str(client.key),
                    "annotation": "cni.projectcalico.org/ipAddrs",
                    "fixedPool": {"subnet": str(VNODE_IP_POOL), "gateway": gateway(VNODE_IP_POOL)},
                    "hostLocal": {
                        "type": "host-local",
                        "dataDir": str(node.directory / "ipam"),
                        "ranges": [
                            [
                                {
                                    "subnet": str(HOST_POD_NETWORK),
                                    "rangeStart": str(pod_range[2]),
                                    "rangeEnd": str(pod_range[-2]),
                                    "gateway": gateway(HOST_POD_NETWORK),
                                }
                            ]
                        ],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(node: RealNode, layout: StateLayout, pki: Pki, cert: Path, key: Path) -> dict[str, Any]:
    endpoint = f"unix://{node.containerd_socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.address,
        "healthzBindAddress": node.address,
        "readOnlyPort": 0,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca.cert)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "cgroupDriver": "cgroupfs",
        # Each node its own root: nested or sibling kubelets sharing one kill each other's pods.
        "cgroupRoot": f"{cgroup_root(layout)}/{node.name}",
        "failCgroupV1": False,
        "failSwapOn": False,
        "resolvConf": str(node.directory / "resolv.conf"),
        "clusterDNS": [],
        # A test machine's disk is shared: never evict or collect images because of it.
        "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%"},
        "imageGCHighThresholdPercent": 100,
        "staticPodPath": "",
        "syncFrequency": "10s",
        "nodeStatusReportFrequency": "10s",
        "serializeImagePulls": False,
    }


def containerd_spec(node: RealNode) -> ProcessSpec:
    """containerd makes the node's mount namespace (binding the node's directories over the fixed
    paths) and holds it; the kubelet and the GPU plugin join it (`joined`)."""
    script = "set -e\n"
    for source, target in {
        node.directory / "kubelet": KUBELET_ROOT,
        node.directory / "pod-logs": POD_LOGS,
        node.directory / "container-logs": CONTAINER_LOGS,
    }.items():
        # The empty mount points are the only trace on the machine's file system.
        target.mkdir(parents=True, exist_ok=True)
        script += f"mount --bind {source} {target}\nmount --make-rshared {target}\n"
    script += f'exec containerd --config={node.directory / "containerd.toml"}\n'
    return ProcessSpec(
        name=f"{node.name}-containerd",
        argv=["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", script],
    )


def kubelet_spec(node: RealNode, containerd_pid: int, bin_dir: Path, labels: dict[str, str]) -> ProcessSpec:
    return _joined(
        node,
        containerd_pid,
        "kubelet",
        [
            str(bin_dir / "kubelet"),
            f"--config={node.directory / 'kubelet.yaml'}",
            f"--kubeconfig={node.directory / 'kubelet.conf'}",
            f"--root-dir={KUBELET_ROOT}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.address}",
            f"--node-labels={','.join(f'{k}={v}' for k, v in sorted(labels.items()))}",
            "--v=1",
        ],
    )


def gpu_plugin_spec(node: RealNode, containerd_pid: int, bin_dir: Path, gpus: int) -> ProcessSpec:
    return _joined(
        node,
        containerd_pid,
        "gpu-plugin",
        [
            str(bin_dir / "vk8s-gpu-plugin"),
            f"--devices={gpus}",
            f"--id-prefix=GPU-{node.name}-",
            f"--device-dir={node.gpu_devices}",
            f"--kubelet-socket={KUBELET_ROOT / 'device-plugins' / 'kubelet.sock'}",
            f"--resource={GPU_RESOURCE}",
        ],
    )


def _joined(node: RealNode, containerd_pid: int, component: str, argv: list[str]) -> ProcessSpec:
    return ProcessSpec(
        name=f"{node.name}-{component}", argv=["nsenter", f"--target={containerd_pid}", "--mount", "--", *argv]
    )


def import_images(node: RealNode, archives: list[Path]) -> None:
    """Pinned, so the kubelet's image GC never removes what no registry could give back."""
    for archive in archives:
        _run(
            "ctr", f"--address={node.containerd_socket}", "--namespace=k8s.io", "images", "import",
            "--label=io.cri-containerd.pinned=pinned", "--no-unpack", str(archive),
        )  # fmt: skip


def write_cni_bin(directory: Path) -> Path:
    """Debian's CNI plugins plus the project's IPAM plugin, which runs with this Python."""
    directory.mkdir(parents=True, exist_ok=True)
    for plugin in ("bridge", "host-local", "static", "portmap", "loopback"):
        target = directory / plugin
        if not target.exists():
            target.symlink_to(CNI_PLUGIN_DIR / plugin)
    shim = directory / IPAM_PLUGIN
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m vk8s.testbed.real.cni_ipam\n")
    shim.chmod(0o755)
    return directory


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.returncode}")

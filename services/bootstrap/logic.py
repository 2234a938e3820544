"""Pure decisions of the bootstrap stage: the kubeadm config for a Kubernetes version, the
manifests pinned per version, and which steps a vNode still needs. No I/O."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from libs.kube.vnodes import CLUSTER_UID_LABEL, VNODE_LABEL

MANIFESTS = Path(__file__).with_name("manifests")
API_SERVER_PORT = 6443
CRI_SOCKET = "unix:///run/containerd/containerd.sock"
# Checks that cannot pass inside a container and say nothing about a vNode's health.
PREFLIGHT_IGNORED = ("SystemVerification", "Swap", "FileContent--proc-sys-net-bridge-bridge-nf-call-iptables")

# Node-side paths, relative to the vNode's root (VK8S_ROOT in the testbed).
KUBEADM_CONFIG = "etc/vk8s/kubeadm.yaml"
CNI_MANIFEST = "etc/vk8s/manifests/cni.yaml"
DEVICE_PLUGIN_MANIFEST = "etc/vk8s/manifests/gpu-device-plugin.yaml"
STORAGE_MANIFEST = "etc/vk8s/manifests/local-path-storage.yaml"

# The addons' images: built on this machine by vk8s.images.builders (`addon_images_for`), preloaded
# into the vNode image and never pulled (the manifests say imagePullPolicy: Never). Each tag says
# what the image is made of, so a changed recipe is a new ref (vNodes that kept their containerd
# import it again); tests/unit/images/test_addon_images.py names the tag to write here when a
# recipe's inputs change.
NETD_IMAGE = "vk8s.local/vk8s-netd:0.1.0-763333e66f8e"  # deploy/images/netd/vk8s-netd on Debian
GPU_PLUGIN_IMAGE = "vk8s.local/vk8s-gpu-plugin:b5b6aa0ae0e0"  # deploy/testbed/gpu-plugin
LOCAL_PATH_PROVISIONER_IMAGE = "vk8s.local/local-path-provisioner:v0.0.33"  # rancher's, from its Go module
# Debian's static busybox (vk8s.images.builders.toolbox_image): the storage helper pods' shell.
TOOLBOX_IMAGE = "vk8s.local/toolbox:1.35.0"
# Where local-path volumes live on a vNode: its node-state volume, so they survive pause/resume.
LOCAL_PATH_DIR = "/var/lib/vk8s-node/local-path"


# The steps of workflow.py as the metrics name them: a manifest's write counts as its apply, and the
# per-worker join-command as one step, so the label has a fixed set of values (each starts at 0).
METRIC_STEPS = (
    "prepare", "state", "start", "kubeadm-config", "kubeadm-init", "cni", "gpu-device-plugin", "storage",
    "kubeconfig", "join-command", "kubeadm-join", "nodes-ready", "server-version",
)  # fmt: skip


def metric_step(step: str) -> str:
    """`cni-write` -> `cni`, `join-command-worker-1` -> `join-command`."""
    step = step.removesuffix("-write")
    return "join-command" if step.startswith("join-command-") else step


def minor(version: str) -> int:
    """'1.20' / 'v1.20.15' -> 20"""
    parts = version.lstrip("v").split(".")
    if len(parts) < 2 or parts[0] != "1" or not parts[1].isdigit():
        raise ValueError(f"not a Kubernetes 1.x version: {version!r}")
    return int(parts[1])


def kubeadm_api_version(version: str) -> str:
    """The kubeadm config API the release reads, from the version catalog (libs/api/compatibility.yaml)."""
    from libs.api.versions import default_matrix  # the catalog of Kubernetes minors

    catalog = default_matrix()
    row = catalog.row(f"1.{minor(version)}")
    if row is None:
        known = catalog.known_kubernetes()
        raise ValueError(f"Kubernetes {version} is not in the version catalog, which knows {known[0]}-{known[-1]}")
    if row.kubeadm_api is None:
        raise ValueError(f"Kubernetes {version} predates kubeadm v1beta2 configs, the oldest bootstrap writes (1.15)")
    return row.kubeadm_api


def _extra_args(api_version: str, args: dict[str, str]) -> Any:
    # v1beta4 turned extraArgs maps into lists of {name, value}.
    if api_version.endswith("v1beta4"):
        return [{"name": k, "value": v} for k, v in args.items()]
    return dict(args)


def _init_checks_ignored(kubeadm_version: str) -> list[str]:
    # kubeadm 1.20 probes the service and pod CIDRs as `https://[<IPv4>]:1234/`, which the Go it is
    # built with here refuses (RFC 3986 brackets only IPv6), so the check fails whatever the proxy
    # settings; 1.34 and later join host and port correctly. The check only asks whether
    # HTTP(S)_PROXY would catch those CIDRs; ignored, kubeadm still prints it.
    return ["HTTPProxyCIDR"] if minor(kubeadm_version) <= 20 else []


@dataclass(frozen=True)
class ClusterNetwork:
    advertise_ip: str
    pod_cidr: str
    service_cidr: str


def kubeadm_init_config(
    *,
    kubeadm_version: str,
    node_name: str,
    network: ClusterNetwork,
    cluster_name: str,
    schedulable_master: bool,
    control_plane_timeout_s: int = 240,
) -> str:
    """InitConfiguration + ClusterConfiguration for the kubeadm of the node image (`v1.36.3`):
    its API version and its release as kubernetesVersion (so kubeadm never looks one up online).
    The advertise address is the vNode's fixed IP, so the certificates survive pod restarts."""
    api = kubeadm_api_version(kubeadm_version)
    node_registration: dict[str, Any] = {
        "name": node_name,
        "criSocket": CRI_SOCKET,
        "kubeletExtraArgs": _extra_args(api, {"node-ip": network.advertise_ip}),
        "ignorePreflightErrors": [*PREFLIGHT_IGNORED, *_init_checks_ignored(kubeadm_version)],
    }
    if not api.endswith("v1beta2"):
        # The node image carries every image kubeadm names; nothing may be pulled (air-gapped sites).
        node_registration["imagePullPolicy"] = "Never"
    if schedulable_master:
        node_registration["taints"] = []
    init = {
        "apiVersion": api,
        "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": network.advertise_ip, "bindPort": API_SERVER_PORT},
        "nodeRegistration": node_registration,
    }
    cluster: dict[str, Any] = {
        "apiVersion": api,
        "kind": "ClusterConfiguration",
        "clusterName": cluster_name,
        "kubernetesVersion": kubeadm_version,
        "controlPlaneEndpoint": f"{network.advertise_ip}:{API_SERVER_PORT}",
        "networking": {
            "podSubnet": network.pod_cidr,
            "serviceSubnet": network.service_cidr,
            "dnsDomain": "cluster.local",
        },
        "apiServer": {"certSANs": [network.advertise_ip, node_name, "127.0.0.1", "localhost"]},
    }
    # A vNode's conntrack table is the host's: kube-proxy must not try to size it (kind does the same).
    proxy = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "conntrack": {"maxPerCore": 0},
    }
    # How long kubeadm waits for the control plane to turn healthy (its default is 4 minutes).
    timeout = f"{control_plane_timeout_s}s"
    if api.endswith("v1beta4"):
        init["timeouts"] = {"controlPlaneComponentHealthCheck": timeout}
    else:
        cluster["apiServer"]["timeoutForControlPlane"] = timeout
    return yaml.safe_dump_all([init, cluster, proxy], sort_keys=False)


@dataclass(frozen=True)
class AddonImages:
    netd: str
    device_plugin: str
    storage_provisioner: str
    storage_helper: str


def addon_images(kubernetes_version: str) -> AddonImages:
    """The addons' images: the same for every supported release (each talks only to stable APIs:
    v1 nodes, the device-plugin v1beta1 API, v1 volumes and storage classes)."""
    minor(kubernetes_version)
    return AddonImages(NETD_IMAGE, GPU_PLUGIN_IMAGE, LOCAL_PATH_PROVISIONER_IMAGE, TOOLBOX_IMAGE)


def _render(template: str, **values: str) -> str:
    return Template((MANIFESTS / template).read_text()).substitute(**values)


def cni_manifest(kubernetes_version: str, pod_cidr: str, service_cidr: str) -> str:
    """vk8s-netd: the pod network (bridge + routes over VXLAN) and masquerading of pod traffic
    leaving the pod and service CIDRs (ip-masq-agent's job)."""
    return _render(
        "vk8s-netd.yaml", NETD_IMAGE=addon_images(kubernetes_version).netd, POD_CIDR=pod_cidr, SERVICE_CIDR=service_cidr
    )


def device_plugin_manifest(kubernetes_version: str) -> str:
    return _render("gpu-device-plugin.yaml", DEVICE_PLUGIN_IMAGE=addon_images(kubernetes_version).device_plugin)


def storage_manifest(kubernetes_version: str) -> str:
    """The default StorageClass `local-path` (rancher's local-path-provisioner), so PVCs bind."""
    images = addon_images(kubernetes_version)
    return _render(
        "local-path-storage.yaml",
        PROVISIONER_IMAGE=images.storage_provisioner,
        HELPER_IMAGE=images.storage_helper,
        LOCAL_PATH_DIR=LOCAL_PATH_DIR,
    )


@dataclass(frozen=True)
class NodeState:
    """What `vk8s-node state` reports."""

    initialized: bool = False
    joined: bool = False
    kubelet_active: bool = False
    prepared: bool = False
    kubernetes_version: str = ""  # of the node image's kubeadm, e.g. v1.36.3

    @classmethod
    def parse(cls, output: str) -> NodeState:
        data = json.loads(output.strip().splitlines()[-1])
        return cls(
            initialized=bool(data.get("initialized")),
            joined=bool(data.get("joined")),
            kubelet_active=bool(data.get("kubeletActive")),
            prepared=bool(data.get("prepared")),
            kubernetes_version=str(data.get("kubernetesVersion") or ""),
        )


def prepare_args(*, node_name: str, cpu_limit: str, memory_limit: str, gpus: int) -> list[str]:
    return [
        "vk8s-node", "prepare", "--node-name", node_name,
        "--cpu-limit", cpu_limit, "--memory-limit", memory_limit, "--gpus", str(gpus),
    ]  # fmt: skip


def write_command(path: str, content: str) -> list[str]:
    """Writes a file on the node without a stdin stream: base64 through an argument."""
    encoded = base64.b64encode(content.encode()).decode()
    return ["sh", "-c", f'printf %s "$1" | base64 -d | vk8s-node write {path}', "vk8s-write", encoded]


def join_args(join_command: str, node_name: str) -> list[str]:
    """`kubeadm join 10.0.0.2:6443 --token t --discovery-token-ca-cert-hash sha256:h` -> vk8s-node join -- ...
    The inner node is named after the vNode, as the master is (not after its pod)."""
    words = join_command.strip().splitlines()[-1].split()
    if words[:2] != ["kubeadm", "join"]:
        raise ValueError(f"not a kubeadm join command: {join_command.strip()[:120]!r}")
    ignored = "--ignore-preflight-errors=" + ",".join(PREFLIGHT_IGNORED)
    return ["vk8s-node", "join", "--", *words[2:], f"--node-name={node_name}", ignored]


# kubeadm bootstrap tokens ([a-z0-9]{6}.[a-z0-9]{16}), and the flags whose value is a secret.
_BOOTSTRAP_TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
_SECRET_FLAGS = ("--token", "--certificate-key")
# An exec URL carries the whole command line (join arguments, file contents) in its query.
_URL_QUERY = re.compile(r"(\b[a-z]+s?://[^\s?\"']+)\?[^\s\"']*")
REDACTED = "<redacted>"
MAX_STEP_MESSAGE = 300


def step_failure(text: str, argv: Sequence[str]) -> str:
    """What a failed step may say in events, status and logs: `text` without the step's secrets,
    bootstrap tokens or URL queries, then shortened (after redacting, so no part of a secret is left)."""
    for index, word in enumerate(argv):
        for flag in _SECRET_FLAGS:
            if word == flag and index + 1 < len(argv):
                secret = argv[index + 1]
            elif word.startswith(f"{flag}="):
                secret = word.split("=", 1)[1]
            else:
                continue
            if secret:
                text = text.replace(secret, REDACTED)
    text = _URL_QUERY.sub(rf"\1?{REDACTED}", text)
    text = _BOOTSTRAP_TOKEN.sub(REDACTED, text)
    return text[:MAX_STEP_MESSAGE]


def server_version(output: str) -> str:
    """The gitVersion of an API server's /version answer: what the cluster runs, not what was asked."""
    try:
        version = json.loads(output[output.index("{") : output.rindex("}") + 1])["gitVersion"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"not an API server's /version answer: {output.strip()[:120]!r}") from None
    if not isinstance(version, str) or not version.startswith("v"):
        raise ValueError(f"not a Kubernetes version in /version: {version!r}")
    return version


def via_shell(argv: list[str]) -> list[str]:
    """Runs argv through the vNode's shell, so `vk8s-node` is found on the vNode's own PATH:
    exec transports that resolve argv[0] themselves (kwok's, in the testbed) see only theirs."""
    return argv if argv[:2] == ["sh", "-c"] else ["sh", "-c", 'exec "$0" "$@"', *argv]


def foreign_pod(
    pod: Mapping[str, Any], statefulset: Mapping[str, Any] | None, *, cluster_uid: str, vnode: str, namespace: str
) -> str | None:
    """Why `pod` (as the API server has it) is not vNode `vnode` of the cluster whose Vk8s has uid
    `cluster_uid`, None when it is: in the cluster's platform namespace `namespace` (no tenant may
    create pods there), labelled so, and run by a StatefulSet (`statefulset`, the controller the
    pod names, as read) there and labelled so."""
    metadata = pod.get("metadata") or {}
    if metadata.get("namespace") != namespace:
        return f"it is not in the cluster's platform namespace {namespace!r}"
    labels = metadata.get("labels") or {}
    if labels.get(CLUSTER_UID_LABEL) != cluster_uid or labels.get(VNODE_LABEL) != vnode:
        return f"its labels do not name vNode {vnode!r} of this cluster"
    owner = next((ref for ref in metadata.get("ownerReferences") or [] if ref.get("controller")), None)
    if owner is None or (owner.get("apiVersion"), owner.get("kind")) != ("apps/v1", "StatefulSet"):
        return "it is not run by a StatefulSet"
    if statefulset is None or (statefulset.get("metadata") or {}).get("uid") != owner.get("uid"):
        return f"its StatefulSet {owner.get('name')!r} is gone"
    set_metadata = statefulset["metadata"]
    set_labels = set_metadata.get("labels") or {}
    if set_labels.get(CLUSTER_UID_LABEL) != cluster_uid or set_labels.get(VNODE_LABEL) != vnode:
        return f"its StatefulSet {owner.get('name')!r} is not vNode {vnode!r} of this cluster"
    if set_metadata.get("namespace") != namespace:
        return f"its StatefulSet {owner.get('name')!r} is not in the cluster's platform namespace"
    return None

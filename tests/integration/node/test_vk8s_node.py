"""The real `vk8s-node` in simulated vNode pods, driven over the real exec API, as the bootstrap
service drives it: prepare, init, a real inner control plane, join, pause/resume, deletion."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.stream import WsApiClient

from libs.kube import name_of
from tests.support.pods import running_pod
from tests.support.wait import eventually
from vk8s.testbed.config import FAKE_NODE_ANNOTATION, GPU_RESOURCE

RC_MARK = "__vk8s_rc="
KUBEADM_CONFIG = """\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 10.250.0.10
nodeRegistration:
  name: c1-master-0
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.33.11
clusterName: c1
networking:
  podSubnet: 90.244.0.0/16
  serviceSubnet: 90.96.0.0/12
"""

pytestmark = pytest.mark.timeout(900)


async def run(api: client.ApiClient, namespace: str, pod: str, script: str) -> tuple[int, str]:
    """Runs `script` with sh in the pod over the exec API; returns its exit status and its output
    (stderr included, in order)."""
    async with WsApiClient(configuration=api.configuration) as ws:
        output = await client.CoreV1Api(ws).connect_get_namespaced_pod_exec(
            pod,
            namespace,
            command=["sh", "-c", f'exec 2>&1\n{script}\necho "{RC_MARK}$?"'],
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
        )
    body, _, status = output.rpartition(RC_MARK)
    return int(status.strip()), body


async def vk8s_node(api: client.ApiClient, namespace: str, pod: str, arguments: str) -> str:
    status, output = await run(api, namespace, pod, f"vk8s-node {arguments}")
    assert status == 0, f"vk8s-node {arguments} in {pod} exited {status}:\n{output}"
    return output


async def state(api: client.ApiClient, namespace: str, pod: str) -> dict[str, Any]:
    return json.loads(await vk8s_node(api, namespace, pod, "state"))


@pytest.fixture
async def gpu_host(kube_api: client.ApiClient, sandbox_root: Path | None) -> client.V1Node:
    if sandbox_root is None:
        pytest.skip("simulated vNodes need the local testbed's exec sandboxes")
    key, value = FAKE_NODE_ANNOTATION
    for node in (await client.CoreV1Api(kube_api).list_node()).items:
        if (node.metadata.annotations or {}).get(key) == value and GPU_RESOURCE in (node.status.capacity or {}):
            return node
    pytest.skip("the testbed has no simulated GPU host")


def vnode_pod(name: str, claim: str, host: str, *, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    limits = {"cpu": cpu, "memory": memory} | ({GPU_RESOURCE: str(gpus)} if gpus else {})
    return {
        "metadata": {"name": name, "labels": {"app": "vk8s", "vnode": name}},
        "spec": {
            "nodeName": host,
            "containers": [
                {
                    "name": "vnode",
                    "image": "ghcr.io/vk8s/kink:v1.33",
                    "securityContext": {"privileged": True},
                    "resources": {"limits": limits, "requests": limits},
                    "volumeMounts": [{"name": "node-state", "mountPath": "/var/lib/vk8s-node"}],
                }
            ],
            "volumes": [{"name": "node-state", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def claim(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


async def gone(read: Callable[[], Awaitable[object]], what: str) -> None:
    async def probe() -> bool:
        try:
            await read()
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    await eventually(probe, f"{what} deleted", 60)


def pids_of(sandbox: Path) -> list[int]:
    return [int(path.read_text().split()[0]) for path in (sandbox / "run").glob("*.pid")]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


async def inner_nodes(kubeconfig: Path) -> dict[str, client.V1Node]:
    api = await config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    async with api:
        nodes = await client.CoreV1Api(api).list_node()
    return {name_of(node): node for node in nodes.items}


async def test_vnode_lifecycle_builds_a_real_inner_cluster(
    kube_api: client.ApiClient, namespace: str, gpu_host: client.V1Node, sandbox_root: Path, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_api)
    host = gpu_host.metadata.name
    for name in ("node-state-master", "node-state-worker"):
        await core.create_namespaced_persistent_volume_claim(namespace, claim(name))
    master_claim = await core.read_namespaced_persistent_volume_claim("node-state-master", namespace)
    master = vnode_pod("c1-master-0", "node-state-master", host, cpu="4", memory="16Gi", gpus=1)
    worker = vnode_pod("c1-worker-0", "node-state-worker", host, cpu="2", memory="8Gi", gpus=0)
    await core.create_namespaced_pod(namespace, master)
    await core.create_namespaced_pod(namespace, worker)
    await running_pod(core, namespace, "c1-master-0", 60)
    await running_pod(core, namespace, "c1-worker-0", 60)
    master_sandbox = sandbox_root / namespace / f"pvc-{master_claim.metadata.uid}"

    # prepare: the host's capacity minus the limits is reserved; exactly the pod's GPU is listed.
    assert (await state(kube_api, namespace, "c1-master-0"))["prepared"] is False
    await vk8s_node(kube_api, namespace, "c1-master-0", "prepare --node-name c1-master-0 --cpu-limit 4 --memory-limit 16Gi --gpus 1")
    prepared = await state(kube_api, namespace, "c1-master-0")
    gpus = json.loads((master_sandbox / "etc" / "vk8s" / "gpus.json").read_text())

    assert prepared == {
        "initialized": False,
        "joined": False,
        "kubeletActive": False,
        "prepared": True,
        "kubernetesVersion": prepared["kubernetesVersion"],
    }
    assert re.fullmatch(r"v1\.\d+\.\d+", prepared["kubernetesVersion"])
    assert gpus["ids"] == [f"GPU-{host}-0"]
    assert "\tc1-master-0\n" in (master_sandbox / "etc" / "hosts").read_text()

    # init: a real inner apiserver answers with admin.conf.
    status, failed = await run(kube_api, namespace, "c1-master-0", "vk8s-node init etc/kubernetes/kubeadm.yaml")
    assert status != 0 and "no kubeadm config" in failed
    await vk8s_node(
        kube_api, namespace, "c1-master-0", f"write etc/kubernetes/kubeadm.yaml <<'EOF'\n{KUBEADM_CONFIG}EOF"
    )
    init_output = await vk8s_node(kube_api, namespace, "c1-master-0", "init /etc/kubernetes/kubeadm.yaml")
    kubeconfig = tmp_path / "inner.conf"
    status, admin_conf = await run(kube_api, namespace, "c1-master-0", "vk8s-node kubeconfig")
    assert status == 0
    kubeconfig.write_text(admin_conf)
    nodes = await inner_nodes(kubeconfig)

    assert "initialized successfully" in init_output
    assert oct((master_sandbox / "etc" / "kubernetes" / "kubeadm.yaml").stat().st_mode & 0o777) == "0o600"
    assert list(nodes) == ["c1-master-0"]
    allocatable = nodes["c1-master-0"].status.allocatable
    assert allocatable["cpu"] == "4"
    assert allocatable["memory"] == str(16 * 2**30)
    assert allocatable[GPU_RESOURCE] == "1"
    assert (await state(kube_api, namespace, "c1-master-0"))["initialized"] is True

    again = await vk8s_node(kube_api, namespace, "c1-master-0", "init /etc/kubernetes/kubeadm.yaml")
    assert "already initialised" in again

    # join: a worker vNode through a fresh token.
    await vk8s_node(kube_api, namespace, "c1-worker-0", "prepare --node-name c1-worker-0 --cpu-limit 2 --memory-limit 8Gi --gpus 0")
    join_command = (await vk8s_node(kube_api, namespace, "c1-master-0", "join-command")).strip()
    token, ca_hash = r"[a-z0-9]{6}\.[a-z0-9]{16}", r"sha256:[0-9a-f]{64}"
    assert re.fullmatch(
        rf"kubeadm join 127\.0\.0\.1:\d+ --token {token} --discovery-token-ca-cert-hash {ca_hash}", join_command
    )
    await vk8s_node(kube_api, namespace, "c1-worker-0", f"join -- {join_command.removeprefix('kubeadm join ')}")
    rejoin = await vk8s_node(kube_api, namespace, "c1-worker-0", f"join -- {join_command}")
    nodes = await inner_nodes(kubeconfig)

    assert "already joined" in rejoin
    assert sorted(nodes) == ["c1-master-0", "c1-worker-0"]
    assert nodes["c1-worker-0"].status.allocatable["cpu"] == "2"
    assert GPU_RESOURCE not in (nodes["c1-worker-0"].status.allocatable or {})

    # pause/resume, grown in place: the pod goes (its processes with it), a new one with two GPUs
    # gets the same volume's sandbox; the started kubelet reports its Node's new resources.
    control_plane = pids_of(master_sandbox)
    await core.delete_namespaced_pod("c1-master-0", namespace, grace_period_seconds=0)
    await gone(lambda: core.read_namespaced_pod("c1-master-0", namespace), "the master pod")
    await eventually(lambda: not any(alive(pid) for pid in control_plane), "the inner control plane to stop", 60)
    grown = vnode_pod("c1-master-0", "node-state-master", host, cpu="4", memory="16Gi", gpus=2)
    await core.create_namespaced_pod(namespace, grown)
    await running_pod(core, namespace, "c1-master-0", 60)
    resumed = await state(kube_api, namespace, "c1-master-0")
    await vk8s_node(kube_api, namespace, "c1-master-0", "prepare --node-name c1-master-0 --cpu-limit 4 --memory-limit 16Gi --gpus 2")
    await vk8s_node(kube_api, namespace, "c1-master-0", "start")
    nodes = await inner_nodes(kubeconfig)

    assert len(control_plane) == 4
    assert resumed["initialized"] and resumed["prepared"] and not resumed["kubeletActive"]
    assert (await state(kube_api, namespace, "c1-master-0"))["kubeletActive"] is True
    assert sorted(nodes) == ["c1-master-0", "c1-worker-0"]
    assert nodes["c1-master-0"].status.allocatable[GPU_RESOURCE] == "2"

    # deleting the cluster: pods, then volumes; the sandboxes and their processes go.
    restarted = pids_of(master_sandbox)
    for name in ("c1-master-0", "c1-worker-0"):
        await core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    for name in ("node-state-master", "node-state-worker"):
        await core.delete_namespaced_persistent_volume_claim(name, namespace)
    await eventually(
        lambda: not any(path.name.startswith("pvc-") for path in (sandbox_root / namespace).glob("*")),
        "both vNode sandboxes to be removed",
        60,
    )

    assert restarted and not any(alive(pid) for pid in restarted)
    assert not master_sandbox.exists()


async def prepared_master(
    kube_api: client.ApiClient, namespace: str, host: client.V1Node, pod: str, kubeadm_config: str
) -> None:
    """A master vNode pod with its own claim, prepared, with `kubeadm_config` written for `init`."""
    core = client.CoreV1Api(kube_api)
    await core.create_namespaced_persistent_volume_claim(namespace, claim(f"node-state-{pod}"))
    master = vnode_pod(pod, f"node-state-{pod}", host.metadata.name, cpu="2", memory="4Gi", gpus=0)
    await core.create_namespaced_pod(namespace, master)
    await running_pod(core, namespace, pod, 60)
    await vk8s_node(kube_api, namespace, pod, f"prepare --node-name {pod} --cpu-limit 2 --memory-limit 4Gi --gpus 0")
    await vk8s_node(kube_api, namespace, pod, f"write etc/kubernetes/kubeadm.yaml <<'EOF'\n{kubeadm_config}EOF")


async def test_a_second_init_while_the_first_runs_waits_and_keeps_its_control_plane(
    kube_api: client.ApiClient, namespace: str, gpu_host: client.V1Node, tmp_path: Path
) -> None:
    """A bootstrap step delivered again while the first `init` still runs on the node: the
    second waits for the first (the node's lock), then finds it initialised; one kubeadm init
    runs, nothing resets the control plane it started."""
    config = KUBEADM_CONFIG.replace("c1-master-0", "c2-master-0").replace("clusterName: c1", "clusterName: c2")
    await prepared_master(kube_api, namespace, gpu_host, "c2-master-0", config)

    first, second = await asyncio.gather(
        run(kube_api, namespace, "c2-master-0", "vk8s-node init etc/kubernetes/kubeadm.yaml"),
        run(kube_api, namespace, "c2-master-0", "vk8s-node init etc/kubernetes/kubeadm.yaml"),
    )
    kubeconfig = tmp_path / "inner.conf"
    kubeconfig.write_text(await vk8s_node(kube_api, namespace, "c2-master-0", "kubeconfig"))

    outputs = sorted([first, second], key=lambda result: "already initialised" in result[1])
    assert [status for status, _ in outputs] == [0, 0], outputs
    assert "initialized successfully" in outputs[0][1]
    assert "already initialised" in outputs[1][1]
    assert list(await inner_nodes(kubeconfig)) == ["c2-master-0"]
    assert (await state(kube_api, namespace, "c2-master-0"))["kubeletActive"] is True


async def test_an_init_failing_after_its_control_plane_came_up_keeps_it(
    kube_api: client.ApiClient, namespace: str, gpu_host: client.V1Node, tmp_path: Path
) -> None:
    """kubeadm init fails in a late phase (here: marking the node with a taint the API server
    refuses): the control plane it started answers, so the failure path keeps it instead of
    `kubeadm reset`, and the next init goes on from there."""
    config = KUBEADM_CONFIG.replace("c1-master-0", "c3-master-0\n  taints: [{key: example.org/late, effect: Bogus}]")
    await prepared_master(kube_api, namespace, gpu_host, "c3-master-0", config)

    status, failed = await run(kube_api, namespace, "c3-master-0", "vk8s-node init etc/kubernetes/kubeadm.yaml")
    kubeconfig = tmp_path / "inner.conf"
    kubeconfig.write_text(await vk8s_node(kube_api, namespace, "c3-master-0", "kubeconfig"))

    assert status != 0 and "kept it, not reset" in failed, failed
    assert list(await inner_nodes(kubeconfig)) == ["c3-master-0"]
    again = await vk8s_node(kube_api, namespace, "c3-master-0", "init etc/kubernetes/kubeadm.yaml")
    assert "already initialised" in again

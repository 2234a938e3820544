"""The deck's scenario on real vNodes: privileged pods on a real host kubelet boot systemd,
containerd and a kubelet; kubeadm makes them a cluster of the version asked for; its pods resolve
names, reach each other across vNodes, and see exactly their vNode's GPU; delete leaves nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from kubernetes.aio import client

from libs.api.versions import default_matrix
from libs.events import REGISTRY
from libs.events.catalog import VNodeSetupProgressed
from libs.kube import GROUP, VERSION
from libs.kube.vnodes import platform_namespace
from tests.e2e.conftest import eventually, run, vk8s_object
from tests.e2e.test_chaos import service_process
from tests.e2e.test_lifecycle import all_gone, assert_no_allocation, running, statefulsets
from tests.support.cli import cli_env
from tests.support.nats import connect_as_service
from tests.support.real_tier import require_real_tier
from vk8s.images.builders import toolbox_ref
from vk8s.local import stack
from vk8s.testbed.config import FleetSpec, pinned_versions
from vk8s.testbed.fixtures import admin_client, fresh_namespace

# Booting real vNodes and kubeadm takes minutes on 2 cores; the module's stack start counts too.
pytestmark = [pytest.mark.real, pytest.mark.timeout(1200)]

GPU = "nvidia.com/gpu"
GPUS_PER_HOST = 4
VERSION_ASKED = pinned_versions()["KUBERNETES_VERSION"]
DEFAULT_MINOR = ".".join(VERSION_ASKED.split(".")[:2])
CATALOG = default_matrix()
# The deck scenario runs the testbed's release (CI builds it anyway). VK8S_TEST_MINORS=all adds a
# cluster of every other minor with a node image (or of those listed: VK8S_TEST_MINORS=1.34,1.35);
# each builds its binaries and images, minutes cold.
_ASKED = os.environ.get("VK8S_TEST_MINORS", "")
OTHER_MINORS = [
    minor
    for minor in CATALOG.available_kubernetes()
    if minor != DEFAULT_MINOR and (_ASKED == "all" or minor in _ASKED.split(","))
]


def release_of(minor: str) -> str:
    row = CATALOG.row(minor)
    assert row is not None and row.release is not None, f"{minor} has no release in the catalog"
    return row.release


@pytest.fixture(scope="module")
def real_product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[stack.StackLayout, stack.StackInfo]]:
    """The whole product on one real GPU host, so both vNodes share it (and must not share GPUs)."""
    require_real_tier()
    layout = stack.StackLayout(tmp_path_factory.mktemp("real-stack"))
    releases = tuple(release_of(minor) for minor in [DEFAULT_MINOR, *OTHER_MINORS])
    fleet = FleetSpec(nodes=1, gpus_per_node=GPUS_PER_HOST, runtime="real", vnode_images=releases)
    # A healthy control plane is up in well under a minute here: a failing one need not take
    # kubeadm's 4 minutes, three times, to fail.
    settings = {"VK8S_BOOTSTRAP_CONTROL_PLANE_TIMEOUT_S": "60", "VK8S_BOOTSTRAP_STEP_ATTEMPTS": "2"}
    info = stack.up(layout, fleet, settings)
    try:
        yield layout, info
    finally:
        stack.down(layout)


@pytest.fixture(scope="module")
def real_env(real_product: tuple[stack.StackLayout, stack.StackInfo]) -> dict[str, str]:
    _, info = real_product
    return cli_env(info)


@pytest.fixture(scope="module")
async def real_host(real_product: tuple[stack.StackLayout, stack.StackInfo]) -> AsyncIterator[client.ApiClient]:
    async with admin_client(Path(real_product[1].kubeconfig)) as api:
        yield api


@pytest.fixture
async def tenant(real_host: client.ApiClient) -> AsyncIterator[str]:
    async with fresh_namespace(real_host, prefix="real-") as name:
        yield name


def cluster_manifest(name: str, namespace: str, minor: str, master_memory: str = "4Gi", *, kubeflow: bool = False) -> str:
    def node(node_name: str, role: str) -> dict[str, Any]:
        # Small requests: the host is this machine's 2 cores, shared by both vNodes.
        memory = master_memory if role == "master" else "4Gi"
        requests = {"cpu": "250m", "memory": min(memory, "1Gi", key=_bytes), GPU: 1}
        limits = {"cpu": "2", "memory": memory, GPU: 1}
        return {"name": node_name, "role": role, "resources": {"requests": requests, "limits": limits}}

    document = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Vk8s",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "deck"}},
        "spec": {"kubernetes": {"version": minor}, "nodes": [node(f"{name}-master", "master"), node(f"{name}-worker", "worker")]},
    }
    if kubeflow:
        document["spec"]["kubeflow"] = {"email": "deck@example.com", "password": "deck-password-1"}
    return yaml.safe_dump(document)


def _bytes(quantity: str) -> int:
    return int(quantity[:-2]) * {"Mi": 2**20, "Gi": 2**30}[quantity[-2:]]


def inner(kubeconfig: Path, env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = run(["kubectl", f"--kubeconfig={kubeconfig}", *args], env, stdin=stdin, timeout=180)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def assert_resolves_the_api_service(kubeconfig: Path, env: dict[str, str], pod: str) -> None:
    """The inner CoreDNS answers, through the inner kube-proxy's service address, from `pod`."""
    resolved = inner(kubeconfig, env, "exec", pod, "--", "nslookup", "kubernetes.default.svc.cluster.local")
    assert "Address: " in resolved.split("kubernetes.default.svc.cluster.local", 1)[1], resolved


def inner_pod(name: str, node: str, command: str, *, gpus: int = 0, tolerate: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main", "image": toolbox_ref(), "imagePullPolicy": "Never", "command": ["sh", "-c", command],
    }  # fmt: skip
    if gpus:
        container["resources"] = {"limits": {GPU: str(gpus)}}
    # A node selector rather than nodeName: the scheduler must see the pod for a
    # WaitForFirstConsumer claim to be provisioned.
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node}, "containers": [container], "terminationGracePeriodSeconds": 1,
    }  # fmt: skip
    if tolerate:
        spec["tolerations"] = [{"operator": "Exists"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


async def test_deck_scenario_on_real_vnodes(
    real_host: client.ApiClient, tenant: str, real_env: dict[str, str], real_product: tuple[stack.StackLayout, stack.StackInfo], tmp_path: Path
) -> None:
    name = "deck"
    applied = run(["kubectl", "apply", "-f", "-"], real_env, stdin=cluster_manifest(name, tenant, DEFAULT_MINOR, kubeflow=True))
    assert applied.returncode == 0, applied.stderr

    obj = await running(real_host, tenant, name, timeout=600)

    history = [entry["phase"] for entry in obj["status"]["conditions"]]
    assert history[0] == "Waiting" and history[-1] == "Running" and "Installing" in history, history
    kubernetes = next(c for c in obj["status"]["readiness"] if c["type"] == "KubernetesReady")
    assert kubernetes["message"] == f"Kubernetes v{VERSION_ASKED} on 2 nodes", kubernetes

    # The admin kubeconfig works from this shell, through the testbed's proxy.
    kubeconfig = tmp_path / "deck.kubeconfig"
    written = run(["vk8s", "kubeconfig", name, "-n", tenant, "-o", str(kubeconfig)], real_env)
    assert written.returncode == 0, written.stderr
    version = json.loads(inner(kubeconfig, real_env, "get", "--raw", "/version"))
    assert version["gitVersion"] == f"v{VERSION_ASKED}"
    nodes = json.loads(inner(kubeconfig, real_env, "get", "nodes", "-o", "json"))["items"]
    ready = {n["metadata"]["name"] for n in nodes for c in n["status"]["conditions"] if c["type"] == "Ready" and c["status"] == "True"}
    assert ready == {f"{name}-master", f"{name}-worker"}

    # Kubeflow's manifests are on the real inner apiserver; its images cannot be pulled here, and
    # the status says which Deployments are not available rather than claiming they are.
    kubeflow = next(c for c in obj["status"]["readiness"] if c["type"] == "KubeflowReady")
    assert (kubeflow["status"], kubeflow["reason"]) == ("False", "DeploymentsUnavailable"), kubeflow
    deployments = json.loads(inner(kubeconfig, real_env, "get", "deployments", "-A", "-o", "json"))["items"]
    kubeflow_deployments = [d for d in deployments if d["metadata"]["namespace"] not in ("kube-system", "local-path-storage")]
    assert kubeflow_deployments, "the Kubeflow manifests were applied"
    for deployment in kubeflow_deployments:
        assert not deployment["status"].get("availableReplicas"), deployment["metadata"]
        assert f"{deployment['metadata']['namespace']}/{deployment['metadata']['name']}: " in kubeflow["message"], kubeflow["message"]
    assert json.loads(inner(kubeconfig, real_env, "get", "profiles.kubeflow.org", "-o", "json"))["items"], "the user's Profile"
    assert {n["status"]["allocatable"][GPU] for n in nodes} == {"1"}

    # Names resolve, and pods on different vNodes reach each other (the CNI inside).
    manifests = [
        inner_pod("server", f"{name}-master", "exec httpd -f -p 8080 -h /etc", tolerate=True),
        inner_pod("client", f"{name}-worker", "exec sleep 3600", gpus=1),
    ]
    inner(kubeconfig, real_env, "apply", "-f", "-", stdin="\n---\n".join(yaml.safe_dump(m) for m in manifests))
    inner(kubeconfig, real_env, "wait", "--for=condition=Ready", "pod/server", "pod/client", "--timeout=120s")
    server_ip = inner(kubeconfig, real_env, "get", "pod", "server", "-o", "jsonpath={.status.podIP}").strip()
    # busybox's static wget crashes here; a plain HTTP/1.0 request over nc does the same.
    request = f'printf "GET /hostname HTTP/1.0\\r\\n\\r\\n" | nc -w 10 {server_ip} 8080'
    fetched = inner(kubeconfig, real_env, "exec", "client", "--", "sh", "-c", request)
    seen = inner(kubeconfig, real_env, "exec", "client", "--", "sh", "-c", 'echo "$NVIDIA_VISIBLE_DEVICES"; ls /dev')
    assert_resolves_the_api_service(kubeconfig, real_env, "client")
    # The default StorageClass binds a claim once a pod uses it.
    claim = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }  # fmt: skip
    user = inner_pod("user", f"{name}-worker", "echo kept > /data/file; exec sleep 3600")
    user["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    user["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    inner(kubeconfig, real_env, "apply", "-f", "-", stdin=f"{yaml.safe_dump(claim)}\n---\n{yaml.safe_dump(user)}")
    inner(kubeconfig, real_env, "wait", "--for=jsonpath={.status.phase}=Bound", "pvc/data", "--timeout=120s")
    inner(kubeconfig, real_env, "wait", "--for=condition=Ready", "pod/user", "--timeout=120s")
    assert inner(kubeconfig, real_env, "exec", "user", "--", "cat", "/data/file").strip() == "kept"
    assert fetched.startswith("HTTP/1.") and fetched.strip().endswith("server"), fetched

    # GPU isolation: the inner pod sees exactly its vNode's one GPU; the two vNodes share none.
    platform = platform_namespace(tenant, name)
    pods = {
        vnode: (await client.CoreV1Api(real_host).list_namespaced_pod(platform, label_selector=f"clusterName={name},vnode={vnode}")).items[0]
        for vnode in (f"{name}-master", f"{name}-worker")
    }
    assert {pod.spec.node_name for pod in pods.values()} == {"gpu-node-0"}, "both vNodes on the one host"
    given = {vnode: vnode_gpus(real_env, platform, pod.metadata.name) for vnode, pod in pods.items()}
    assert all(len(ids) == 1 for ids in given.values()) and not given[f"{name}-master"] & given[f"{name}-worker"]
    inner_ids, *devices = seen.split()
    assert {inner_ids} == given[f"{name}-worker"]
    assert [d for d in devices if d.startswith("nvidia") and d[6:].isdigit()] == [f"nvidia{inner_ids.rsplit('-', 1)[1]}"]

    # Labels on the Vk8s reach the vNode StatefulSets.
    assert run(["kubectl", "label", "vk8s", name, "-n", tenant, "stage=prod"], real_env).returncode == 0

    async def relabelled() -> bool:
        sets = await statefulsets(real_host, tenant, name)
        return bool(sets) and all((s.metadata.labels or {}).get("stage") == "prod" for s in sets)

    await eventually(relabelled, "labels on the StatefulSets", timeout=120)

    # Delete leaves nothing: objects, volumes, addresses, and the GPUs are free again.
    deleted = run(["vk8s", "delete", name, "-n", tenant, "--wait", "--timeout", "300"], real_env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert await vk8s_object(real_host, tenant, name) is None
    assert await statefulsets(real_host, tenant, name) == []
    core = client.CoreV1Api(real_host)

    async def gone() -> bool:
        volumes = [v for v in (await core.list_persistent_volume()).items if v.spec.claim_ref and v.spec.claim_ref.namespace == platform]
        return not volumes

    await all_gone(real_host, tenant, name)  # the platform namespace, with the vNode pods and claims
    await eventually(gone, "the vNodes' volumes to go", timeout=120)
    assert_no_allocation(real_product[1], tenant, name)
    await core.create_namespaced_pod(tenant, inner_pod("all-gpus", "gpu-node-0", "exec sleep 60", gpus=GPUS_PER_HOST))

    async def all_gpus_free() -> bool:
        return (await core.read_namespaced_pod("all-gpus", tenant)).status.phase == "Running"

    await eventually(all_gpus_free, f"a pod with all {GPUS_PER_HOST} GPUs of the host to run", timeout=60)


def vnode_gpus(env: dict[str, str], namespace: str, pod: str) -> set[str]:
    """The GPUs the host's device plugin gave a vNode pod, as its container sees them."""
    result = run(["kubectl", "exec", "-n", namespace, pod, "--", "printenv", "NVIDIA_VISIBLE_DEVICES"], env)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.strip().split(","))


@pytest.mark.parametrize("minor", OTHER_MINORS)
async def test_each_built_minor_runs_and_reports_its_version(
    real_host: client.ApiClient, tenant: str, real_env: dict[str, str], minor: str, tmp_path: Path
) -> None:
    name = f"v{minor.replace('.', '-')}"
    applied = run(["kubectl", "apply", "-f", "-"], real_env, stdin=cluster_manifest(name, tenant, minor))
    assert applied.returncode == 0, applied.stderr

    obj = await running(real_host, tenant, name, timeout=600)

    kubernetes = next(c for c in obj["status"]["readiness"] if c["type"] == "KubernetesReady")
    assert kubernetes["message"] == f"Kubernetes v{release_of(minor)} on 2 nodes", kubernetes
    # What kubeadm of that release runs serves: etcd, CoreDNS and kube-proxy of its own image set.
    kubeconfig = tmp_path / f"{name}.kubeconfig"
    written = run(["vk8s", "kubeconfig", name, "-n", tenant, "-o", str(kubeconfig)], real_env)
    assert written.returncode == 0, written.stderr
    inner(kubeconfig, real_env, "wait", "--for=condition=Ready", "pods", "--all", "-n", "kube-system", "--timeout=180s")
    inner(kubeconfig, real_env, "apply", "-f", "-", stdin=yaml.safe_dump(inner_pod("client", f"{name}-worker", "exec sleep 3600")))
    inner(kubeconfig, real_env, "wait", "--for=condition=Ready", "pod/client", "--timeout=120s")
    assert_resolves_the_api_service(kubeconfig, real_env, "client")
    deleted = run(["vk8s", "delete", name, "-n", tenant, "--wait", "--timeout", "300"], real_env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr


async def test_a_master_too_small_for_its_control_plane_fails_with_kubeadms_words(
    real_host: client.ApiClient, tenant: str, real_env: dict[str, str], real_product: tuple[stack.StackLayout, stack.StackInfo]
) -> None:
    """A real failure, not a simulated one: 350 MiB cannot hold etcd, the API server, the
    controller-manager and the scheduler, so they are OOM-killed and kubeadm init gives up."""
    name = "tiny"
    applied = run(["kubectl", "apply", "-f", "-"], real_env, stdin=cluster_manifest(name, tenant, DEFAULT_MINOR, "350Mi"))
    assert applied.returncode == 0, applied.stderr

    async def failed() -> dict[str, Any] | None:
        # The status converges: the step's event and the cluster's failure may fold in either order.
        status = ((await vk8s_object(real_host, tenant, name)) or {}).get("status") or {}
        assert status.get("phase") != "Running", status
        setup = (status.get("vnodeKubernetesSetupStatuses") or {}).get(f"{name}-master") or {}
        return status if status.get("phase") == "Failed" and setup.get("isKubernetesSetup") == "Failed" else None

    status = await eventually(failed, f"{tenant}/{name} Failed, on the cluster and its master", timeout=600)

    assert status["message"].startswith(f"bootstrap: {name}-master: step kubeadm-init failed"), status["message"]
    assert "wait-control-plane" in status["message"], "kubeadm's own words"

    deleted = run(["vk8s", "delete", name, "-n", tenant, "--wait", "--timeout", "300"], real_env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    await all_gone(real_host, tenant, name)  # the platform namespace, with the vNode pods and claims
    assert_no_allocation(real_product[1], tenant, name)


async def test_pause_resume_keeps_the_inner_node_and_a_new_worker_joins(
    real_host: client.ApiClient, tenant: str, real_env: dict[str, str], tmp_path: Path
) -> None:
    name = "keep"
    document = yaml.safe_load(cluster_manifest(name, tenant, DEFAULT_MINOR))
    worker = document["spec"]["nodes"].pop()
    assert run(["kubectl", "apply", "-f", "-"], real_env, stdin=yaml.safe_dump(document)).returncode == 0
    await running(real_host, tenant, name, timeout=600)
    kubeconfig = tmp_path / "keep.kubeconfig"
    assert run(["vk8s", "kubeconfig", name, "-n", tenant, "-o", str(kubeconfig)], real_env).returncode == 0

    def inner_nodes() -> dict[str, str]:
        listed = json.loads(inner(kubeconfig, real_env, "get", "nodes", "-o", "json"))["items"]
        return {n["metadata"]["name"]: n["metadata"]["uid"] for n in listed}

    before = inner_nodes()
    assert run(["kubectl", "annotate", "vk8s", name, "-n", tenant, "vk8s-resource-stopped=true"], real_env).returncode == 0

    async def paused() -> bool:
        vnode_pods = platform_namespace(tenant, name)
        pods = (await client.CoreV1Api(real_host).list_namespaced_pod(vnode_pods, label_selector=f"clusterName={name}")).items
        obj = await vk8s_object(real_host, tenant, name)
        return ((obj or {}).get("status") or {}).get("phase") == "Paused" and not pods

    await eventually(paused, "Paused with no vNode pod", timeout=300)
    assert run(["kubectl", "annotate", "vk8s", name, "-n", tenant, "vk8s-resource-stopped-"], real_env).returncode == 0
    await running(real_host, tenant, name, timeout=600)
    # The node state stayed on its volume: the same inner node, no second kubeadm init.
    assert inner_nodes() == before

    document["spec"]["nodes"].append(worker)
    assert run(["kubectl", "apply", "-f", "-"], real_env, stdin=yaml.safe_dump(document)).returncode == 0

    async def joined() -> bool:
        nodes = json.loads(inner(kubeconfig, real_env, "get", "nodes", "-o", "json"))["items"]
        ready = [n for n in nodes for c in n["status"]["conditions"] if c["type"] == "Ready" and c["status"] == "True"]
        return {n["metadata"]["name"] for n in ready} == {f"{name}-master", f"{name}-worker"}

    await eventually(joined, "the new worker Ready in the inner cluster", timeout=600)
    assert inner_nodes()[f"{name}-master"] == before[f"{name}-master"]
    deleted = run(["vk8s", "delete", name, "-n", tenant, "--wait", "--timeout", "300"], real_env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr


async def test_bootstrap_killed_during_kubeadm_init_resumes_to_a_running_cluster(
    real_host: client.ApiClient, tenant: str, real_env: dict[str, str], real_product: tuple[stack.StackLayout, stack.StackInfo], tmp_path: Path
) -> None:
    """The chaos scenario on real vNodes: the bootstrap service is SIGKILLed while `kubeadm init`
    runs on the master (its keeper starts it again). The redelivered work resumes without failing the
    cluster: the master's control plane comes up (the init is not made twice), the worker joins, and
    the cluster runs the version asked for."""
    _, info = real_product
    name = "chaos"
    cluster_id = f"{tenant}/{name}"
    master = f"{name}-master"
    nc = await connect_as_service(info, "projector")
    setup = await nc.jetstream().subscribe(VNodeSetupProgressed.subject, ordered_consumer=True)
    seen: list[VNodeSetupProgressed] = []

    async def drain_setup_events() -> None:
        """Every setup event stored so far (of this cluster) into `seen`."""
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                event = REGISTRY.decode(VNodeSetupProgressed.subject, (await setup.next_msg(timeout=1)).data)
                if event.cluster_id == cluster_id:
                    seen.append(event.data)

    async def master_step(step: str, status: str) -> bool:
        await drain_setup_events()
        return any((e.vnode, e.step, e.status) == (master, step, status) for e in seen)

    try:
        applied = run(["kubectl", "apply", "-f", "-"], real_env, stdin=cluster_manifest(name, tenant, DEFAULT_MINOR))
        assert applied.returncode == 0, applied.stderr
        await eventually(lambda: master_step("kubeadm-init", "Running"), "kubeadm init to start on the master", timeout=600)
        await asyncio.sleep(3)  # well into init: it takes tens of seconds here
        assert not await master_step("kubeadm-init", "Success"), "killed while kubeadm init runs"
        os.kill(service_process(info.service_pids["bootstrap"]), signal.SIGKILL)

        obj = await running(real_host, tenant, name, timeout=600)
        # The restarted stage reads the node's state: an init under way or done (admin.conf is
        # written early) is started and waited for under the node's lock, not made again.
        await drain_setup_events()
        assert {e.step for e in seen if (e.vnode, e.status) == (master, "Success")} & {"kubeadm-init", "start"}, seen
    finally:
        await setup.unsubscribe()
        await nc.drain()

    history = [entry["phase"] for entry in obj["status"]["conditions"]]
    assert "Failed" not in history, history
    kubernetes = next(c for c in obj["status"]["readiness"] if c["type"] == "KubernetesReady")
    assert kubernetes["message"] == f"Kubernetes v{VERSION_ASKED} on 2 nodes", kubernetes
    kubeconfig = tmp_path / "chaos.kubeconfig"
    assert run(["vk8s", "kubeconfig", name, "-n", tenant, "-o", str(kubeconfig)], real_env).returncode == 0
    nodes = json.loads(inner(kubeconfig, real_env, "get", "nodes", "-o", "json"))["items"]
    ready = {n["metadata"]["name"] for n in nodes for c in n["status"]["conditions"] if c["type"] == "Ready" and c["status"] == "True"}
    assert ready == {master, f"{name}-worker"}
    assert json.loads(inner(kubeconfig, real_env, "get", "--raw", "/version"))["gitVersion"] == f"v{VERSION_ASKED}"

    deleted = run(["vk8s", "delete", name, "-n", tenant, "--wait", "--timeout", "300"], real_env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    await all_gone(real_host, tenant, name)
    assert_no_allocation(info, tenant, name)

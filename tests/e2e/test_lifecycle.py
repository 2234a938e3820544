"""The original project's end-to-end scenario and what it could not do, against the whole product."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes.aio import client, config

from libs.kube import GROUP, VERSION, name_of
from libs.kube.vnodes import platform_namespace
from tests.e2e.conftest import ROOT, eventually, phase_of, run, vk8s_object
from vk8s.local import stack
from vk8s.testbed.node_sim.sandbox import MISSING_MODULE_ANNOTATION

GPU = "nvidia.com/gpu"


def manifest(name: str, namespace: str, *, workers: int = 0, gpus: int = 1, kubeflow: bool = True, labels: dict[str, str] | None = None) -> str:
    def node(node_name: str, role: str) -> dict[str, Any]:
        amounts = {"cpu": "2", "memory": "4Gi", GPU: gpus}
        return {"name": node_name, "role": role, "resources": {"requests": amounts, "limits": {**amounts, "cpu": "4", "memory": "8Gi"}}}

    spec: dict[str, Any] = {
        "kubernetes": {"version": "1.36"},
        "nodes": [node(f"{name}-master", "master")] + [node(f"{name}-worker-{i}", "worker") for i in range(workers)],
    }
    if kubeflow:
        spec["kubeflow"] = {"email": f"{name}@example.com", "password": "e2e-password-1"}
    return yaml.safe_dump(
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Vk8s", "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}, "spec": spec}
    )


async def running(api: client.ApiClient, namespace: str, name: str, timeout: float = 600) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        obj = await vk8s_object(api, namespace, name)
        status = (obj or {}).get("status") or {}
        assert status.get("phase") != "Failed", status
        return obj if status.get("phase") == "Running" else None

    return await eventually(check, f"{namespace}/{name} Running", timeout=timeout)


async def statefulsets(api: client.ApiClient, namespace: str, cluster: str) -> list[client.V1StatefulSet]:
    """The cluster's vNode StatefulSets, in its platform namespace (none once that is gone)."""
    apps = client.AppsV1Api(api)
    listing = await apps.list_namespaced_stateful_set(platform_namespace(namespace, cluster), label_selector=f"clusterName={cluster}")
    return list(listing.items)


async def all_gone(api: client.ApiClient, namespace: str, cluster: str) -> None:
    """Nothing of the cluster is left: its platform namespace is gone, and the tenant's holds no claim of it."""
    with pytest.raises(client.ApiException) as gone:
        await client.CoreV1Api(api).read_namespace(platform_namespace(namespace, cluster))
    assert gone.value.status == 404
    claims = await client.CoreV1Api(api).list_namespaced_persistent_volume_claim(namespace)
    assert [name_of(c) for c in claims.items if cluster in name_of(c)] == []


def http_json(info: stack.StackInfo, service: str, path: str) -> Any:
    """A read API of the stack, with the token `vk8s up` generated."""
    url = f"http://127.0.0.1:{info.service_ports[service]}{path}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {info.read_api_token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def assert_no_allocation(info: stack.StackInfo, namespace: str, name: str) -> None:
    try:
        left = http_json(info, "ipmanager", f"/v1/allocations/{namespace}/{name}")
    except urllib.error.HTTPError as error:
        assert error.code == 404
    else:
        assert not left.get("ips") and not left.get("vnodeIps"), left


async def inner_nodes(api: client.ApiClient, namespace: str, cluster: str) -> list[client.V1Node]:
    """The inner cluster's nodes; its API server may still be coming back (after a resume)."""
    secret = await client.CoreV1Api(api).read_namespaced_secret(f"{cluster}-kubeconfig", namespace)
    kubeconfig = yaml.safe_load(base64.b64decode(secret.data["kubeconfig"]))
    configuration = client.Configuration()
    await config.load_kube_config_from_dict(kubeconfig, client_configuration=configuration)

    async def listed() -> list[client.V1Node] | None:
        try:
            async with client.ApiClient(configuration) as inner:
                return list((await client.CoreV1Api(inner).list_node(_request_timeout=10)).items)
        except (OSError, TimeoutError, aiohttp.ClientError, client.ApiException):
            return None

    nodes: list[client.V1Node] = await eventually(listed, f"the API server of {namespace}/{cluster}", timeout=120)
    return nodes


async def test_apply_runs_propagates_labels_and_delete_frees_everything(
    api: client.ApiClient, namespace: str, product_env: dict[str, str], product: tuple[stack.StackLayout, stack.StackInfo]
) -> None:
    name = "e2e-orig"
    applied = run(["kubectl", "apply", "-f", "-"], product_env, stdin=manifest(name, namespace, workers=1, labels={"team": "a"}))
    assert applied.returncode == 0, applied.stderr
    obj = await running(api, namespace, name)

    history = [entry["phase"] for entry in obj["status"]["conditions"]]
    assert history[0] == "Waiting" and history[-1] == "Running", history
    assert "Installing" in history and history.index("Installing") > history.index("Waiting")
    messages = [entry["message"] for entry in obj["status"]["conditions"]]
    assert len(messages) == len(set(zip(history, messages, strict=True))), "history entries repeat"
    async def set_up() -> bool:
        setup = ((await vk8s_object(api, namespace, name)) or {}).get("status", {}).get("vnodeKubernetesSetupStatuses", {})
        return len(setup) == 2 and {v["isKubernetesSetup"] for v in setup.values()} == {"Success"}

    await eventually(set_up, "both vNodes set up", timeout=60)
    printed = run(["kubectl", "get", "vk8s", name, "-n", namespace], product_env)
    assert "Running" in printed.stdout, printed.stdout

    # labels on the Vk8s reach the vNode StatefulSets (the original's e2e check)
    patch = run(["kubectl", "label", "vk8s", name, "-n", namespace, "stage=prod"], product_env)
    assert patch.returncode == 0, patch.stderr

    async def relabelled() -> bool:
        sets = await statefulsets(api, namespace, name)
        return bool(sets) and all((s.metadata.labels or {}).get("stage") == "prod" for s in sets)

    await eventually(relabelled, "labels on the StatefulSets", timeout=120)

    _layout, info = product
    allocations = http_json(info, "ipmanager", f"/v1/allocations/{namespace}/{name}")
    assert allocations, "the cluster holds IPs while it runs"

    deleted = run(["vk8s", "delete", name, "-n", namespace, "--wait", "--timeout", "300"], product_env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert await vk8s_object(api, namespace, name) is None
    assert await statefulsets(api, namespace, name) == []
    await all_gone(api, namespace, name)
    assert_no_allocation(info, namespace, name)


async def test_gpu_isolation_one_of_eight(api: client.ApiClient, namespace: str, product_env: dict[str, str]) -> None:
    name = "e2e-gpu"
    assert run(["kubectl", "apply", "-f", "-"], product_env, stdin=manifest(name, namespace, gpus=1, kubeflow=False)).returncode == 0
    await running(api, namespace, name)
    vnode_pods = platform_namespace(namespace, name)
    [pod] = (await client.CoreV1Api(api).list_namespaced_pod(vnode_pods, label_selector=f"clusterName={name}")).items
    assert not (await client.CoreV1Api(api).list_namespaced_pod(namespace)).items, "no vNode in the tenant's namespace"
    [container] = [c for c in pod.spec.containers if c.name == "vnode"]
    assert container.resources.limits[GPU] == "1" and container.resources.requests[GPU] == "1"
    host = await client.CoreV1Api(api).read_node(pod.spec.node_name)
    assert host.status.capacity[GPU] == "8"
    [inner] = await inner_nodes(api, namespace, name)
    assert inner.status.allocatable[GPU] == "1"
    assert inner.status.allocatable["cpu"] == "4"


async def test_pause_resume_keeps_the_cluster(api: client.ApiClient, namespace: str, product_env: dict[str, str]) -> None:
    name = "e2e-pause"
    assert run(["kubectl", "apply", "-f", "-"], product_env, stdin=manifest(name, namespace, kubeflow=False)).returncode == 0
    await running(api, namespace, name)
    before = {n.metadata.name: n.metadata.uid for n in await inner_nodes(api, namespace, name)}

    assert run(["kubectl", "annotate", "vk8s", name, "-n", namespace, "vk8s-resource-stopped=true"], product_env).returncode == 0
    await eventually(lambda: phase_of(api, namespace, name), "a phase", timeout=5)

    async def paused() -> bool:
        sets = await statefulsets(api, namespace, name)
        return await phase_of(api, namespace, name) == "Paused" and all(s.spec.replicas == 0 for s in sets)

    await eventually(paused, "Paused with replicas 0", timeout=180)

    assert run(["kubectl", "annotate", "vk8s", name, "-n", namespace, "vk8s-resource-stopped-"], product_env).returncode == 0
    obj = await running(api, namespace, name)
    assert all(s.spec.replicas == 1 for s in await statefulsets(api, namespace, name))
    # the node state stayed on the volume: the same inner nodes, no second kubeadm init
    after = {n.metadata.name: n.metadata.uid for n in await inner_nodes(api, namespace, name)}
    assert after == before
    phases = [e["phase"] for e in obj["status"]["conditions"]]
    assert "Paused" in phases and phases[-1] == "Running", phases
    assert phases.index("Paused") > phases.index("Running"), "paused after it first ran"


async def test_scale_out_joins_a_new_worker(api: client.ApiClient, namespace: str, product_env: dict[str, str]) -> None:
    name = "e2e-scale"
    assert run(["kubectl", "apply", "-f", "-"], product_env, stdin=manifest(name, namespace, kubeflow=False)).returncode == 0
    await running(api, namespace, name)
    assert len(await inner_nodes(api, namespace, name)) == 1
    assert run(["kubectl", "apply", "-f", "-"], product_env, stdin=manifest(name, namespace, workers=1, kubeflow=False)).returncode == 0

    async def joined() -> bool:
        return len(await inner_nodes(api, namespace, name)) == 2

    await eventually(joined, "the new worker in the inner cluster", timeout=300)
    await running(api, namespace, name)
    assert len(await statefulsets(api, namespace, name)) == 2


async def test_vk8s_create_wait_shows_progress_until_running(
    api: client.ApiClient, product_env: dict[str, str], tmp_path: Path
) -> None:
    created = run(["vk8s", "create", "-f", str(ROOT / "examples/demo.yaml"), "--wait", "--timeout", "600"], product_env, timeout=700)
    assert created.returncode == 0, created.stdout + created.stderr
    lines = created.stdout.splitlines()
    assert any("Scheduled:" in line for line in lines), lines
    assert any("Kubernetes ready" in line for line in lines), lines
    assert lines[-1].startswith("vk8s/demo: Running after"), lines[-1]
    shown = run(["vk8s", "get", "demo", "-o", "yaml"], product_env)
    status = yaml.safe_load(shown.stdout)["status"]
    assert status["phase"] == "Running"
    assert next(c["phase"] for c in status["conditions"]) == "Waiting"

    # The simulated tier's admin kubeconfig works from this shell too, and says what runs.
    kubeconfig = tmp_path / "demo.kubeconfig"
    written = run(["vk8s", "kubeconfig", "demo", "-o", str(kubeconfig)], product_env)
    assert written.returncode == 0, written.stderr
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    nodes = run(["kubectl", f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "name"], product_env)
    assert nodes.returncode == 0, nodes.stderr
    assert nodes.stdout.split() == ["node/demo-master", "node/demo-worker"], nodes.stdout


async def test_a_failing_bootstrap_step_fails_the_cluster_and_leaks_nothing(
    api: client.ApiClient, namespace: str, product_env: dict[str, str], product: tuple[stack.StackLayout, stack.StackInfo]
) -> None:
    """Every host's kernel lacks br_netfilter (a simulated host fault): `vk8s-node prepare` fails,
    is retried, and the cluster ends Failed with that step's message; deleting it frees all."""
    core = client.CoreV1Api(api)
    hosts = [n.metadata.name for n in (await core.list_node()).items]
    fault = {"metadata": {"annotations": {MISSING_MODULE_ANNOTATION: "br_netfilter"}}}
    for host in hosts:
        await core.patch_node(host, fault)
    name = "e2e-fail"
    try:
        assert run(["kubectl", "apply", "-f", "-"], product_env, stdin=manifest(name, namespace, kubeflow=False)).returncode == 0

        async def failed() -> dict[str, Any] | None:
            # The status converges: the step's event and the cluster's failure may be folded in either order.
            status = ((await vk8s_object(api, namespace, name)) or {}).get("status") or {}
            setup = (status.get("vnodeKubernetesSetupStatuses") or {}).get(f"{name}-master") or {}
            return status if status.get("phase") == "Failed" and setup.get("isKubernetesSetup") == "Failed" else None

        status = await eventually(failed, "Failed, on the cluster and its master", timeout=300)
    finally:
        for host in hosts:
            await core.patch_node(host, {"metadata": {"annotations": {MISSING_MODULE_ANNOTATION: None}}})
    assert "step prepare failed after 3 attempts" in status["message"], status["message"]
    assert "br_netfilter" in status["message"]
    setup = status["vnodeKubernetesSetupStatuses"][f"{name}-master"]
    assert setup["isKubernetesSetup"] == "Failed" and "br_netfilter" in setup["message"]

    _, info = product
    assert http_json(info, "ipmanager", f"/v1/allocations/{namespace}/{name}"), "it holds its IP"
    deleted = run(["vk8s", "delete", name, "-n", namespace, "--wait", "--timeout", "300"], product_env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert await statefulsets(api, namespace, name) == []
    await all_gone(api, namespace, name)
    assert_no_allocation(info, namespace, name)

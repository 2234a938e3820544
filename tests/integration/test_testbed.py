"""The control plane is a real one: validation, optimistic concurrency, scheduling onto simulated GPU
nodes, garbage collection, exec over the real streaming API, and RBAC."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.stream import WsApiClient

from libs.kube import name_of
from tests.support.pods import running_pod
from tests.support.wait import eventually
from vk8s.images.builders import toolbox_ref
from vk8s.testbed import lifecycle
from vk8s.testbed.config import FAKE_NODE_ANNOTATION, GPU_PRODUCT_LABEL, GPU_RESOURCE, GPU_TOPOLOGY_LABEL, ZONE_LABEL, StateLayout
from vk8s.testbed.crds import project_crds
from vk8s.testbed.fixtures import TEST_FLEET, ControlPlane, new_api_client, private_testbed
from vk8s.testbed.node_sim.processes import start_time

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def testbed_nodes(kube_api: client.ApiClient, kube_control_plane: ControlPlane) -> list[client.V1Node]:
    """The testbed's own simulated GPU hosts (other tests may add simulated nodes of their own)."""
    if kube_control_plane.fleet is None:
        pytest.skip("only the local testbed has simulated GPU nodes")
    names = kube_control_plane.fleet.node_names()
    nodes = await client.CoreV1Api(kube_api).list_node()
    return [node for node in nodes.items if name_of(node) in names]


@pytest.fixture
def gpu_node(testbed_nodes: list[client.V1Node]) -> client.V1Node:
    if not testbed_nodes:
        pytest.skip("this testbed has no simulated nodes")
    return testbed_nodes[0]


def tier_image(tier: str) -> str:
    """kwok never pulls images (the name only has to be well-formed); real nodes have the toolbox."""
    return toolbox_ref() if tier == "real" else "registry.invalid/vk8s/trainer:1"


def pod_manifest(
    name: str, node: str, *, gpus: int = 0, tier: str = "kwok", annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    resources = {"limits": {GPU_RESOURCE: str(gpus)}} if gpus else {}
    container = {"name": "main", "image": tier_image(tier), "command": ["sleep", "3600"], "resources": resources}
    return {
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations or {}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def vk8s_plural() -> tuple[str, str, str]:
    crd = next((c for c in project_crds() if c["spec"]["names"]["kind"] == "Vk8s"), None)
    if crd is None:
        pytest.skip("deploy/crds/ has no Vk8s CRD yet")
    version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    return crd["spec"]["group"], version, crd["spec"]["names"]["plural"]


@pytest.fixture
def vk8s_sample() -> dict[str, Any]:
    """The first Vk8s in examples/: what users write, so the CRD must accept it."""
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "Vk8s":
                return document
    pytest.skip("examples/ has no Vk8s")


@pytest.mark.parametrize(
    ("breakage", "field"),
    [
        (lambda spec: spec["nodes"][0].update(role="captain"), "spec.nodes[0].role"),
        (lambda spec: spec.pop("nodes"), "spec.nodes"),
    ],
    ids=["unknown-role", "no-nodes"],
)
async def test_invalid_vk8s_is_rejected_by_crd_validation(
    kube_api: client.ApiClient,
    namespace: str,
    vk8s_sample: dict[str, Any],
    breakage: Callable[[dict[str, Any]], object],
    field: str,
) -> None:
    group, version, plural = vk8s_plural()
    invalid = copy.deepcopy(vk8s_sample)
    breakage(invalid["spec"])

    with pytest.raises(ApiException) as raised:
        await client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            group, version, namespace, plural, invalid
        )

    assert raised.value.status == 422
    assert raised.value.body is not None and field in raised.value.body


async def test_vk8s_is_stored_and_status_goes_through_the_subresource(
    kube_api: client.ApiClient, namespace: str, vk8s_sample: dict[str, Any]
) -> None:
    group, version, plural = vk8s_plural()
    custom = client.CustomObjectsApi(kube_api)
    name = vk8s_sample["metadata"]["name"]
    created = cast(dict[str, Any], await custom.create_namespaced_custom_object(group, version, namespace, plural, vk8s_sample))
    assert created["spec"]["nodes"][0]["name"] == vk8s_sample["spec"]["nodes"][0]["name"]

    status = {"phase": "Scheduling", "message": "Waiting for 1 vNode to be scheduled"}
    await custom.patch_namespaced_custom_object_status(
        group, version, namespace, plural, name, {"status": status}, _content_type="application/merge-patch+json"
    )
    # The main resource ignores status, as a spec writer must not overwrite a controller's status.
    await custom.patch_namespaced_custom_object(
        group, version, namespace, plural, name, {"status": {"phase": "Failed"}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    with pytest.raises(ApiException) as invalid_status:
        await custom.patch_namespaced_custom_object_status(
            group, version, namespace, plural, name, {"status": {"phase": "Exploded"}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip
    stored = cast(dict[str, Any], await custom.get_namespaced_custom_object(group, version, namespace, plural, name))

    assert stored["status"] == status
    assert stored["metadata"]["generation"] == 1
    assert invalid_status.value.status == 422


async def test_stale_vk8s_update_conflicts(
    kube_api: client.ApiClient, namespace: str, vk8s_sample: dict[str, Any]
) -> None:
    group, version, plural = vk8s_plural()
    custom = client.CustomObjectsApi(kube_api)
    name = vk8s_sample["metadata"]["name"]
    created = cast(dict[str, Any], await custom.create_namespaced_custom_object(group, version, namespace, plural, vk8s_sample))
    first, stale = copy.deepcopy(created), copy.deepcopy(created)
    first["metadata"]["labels"] = {"writer": "first"}
    await custom.replace_namespaced_custom_object(group, version, namespace, plural, name, first)

    stale["metadata"]["labels"] = {"writer": "stale"}
    with pytest.raises(ApiException) as raised:
        await custom.replace_namespaced_custom_object(group, version, namespace, plural, name, stale)

    assert raised.value.status == 409
    stored = cast(dict[str, Any], await custom.get_namespaced_custom_object(group, version, namespace, plural, name))
    assert stored["metadata"]["labels"] == {"writer": "first"}


async def test_simulated_nodes_look_like_gpu_hosts(
    testbed_nodes: list[client.V1Node], kube_control_plane: ControlPlane
) -> None:
    fleet = kube_control_plane.fleet
    assert fleet is not None
    assert len(testbed_nodes) == fleet.nodes
    key, value = FAKE_NODE_ANNOTATION
    for node in testbed_nodes:
        labels = node.metadata.labels
        assert node.metadata.annotations[key] == value
        assert node.status.allocatable[GPU_RESOURCE] == str(fleet.gpus_per_node)
        assert labels[GPU_PRODUCT_LABEL] == fleet.gpu_model
        assert labels[GPU_TOPOLOGY_LABEL] == fleet.gpu_topology
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    zones = {node.metadata.labels[ZONE_LABEL] for node in testbed_nodes}
    assert zones == set(fleet.zones[: fleet.nodes]), "nodes spread over the zones"


async def test_statefulset_pinned_to_gpu_node_runs(tier: str, tier_api: client.ApiClient, tier_namespace: str) -> None:
    kube_api, namespace, node = tier_api, tier_namespace, "gpu-node-0"
    template = pod_manifest("trainer", node, gpus=2, tier=tier)
    statefulset = {
        "metadata": {"name": "trainer"},
        "spec": {
            "serviceName": "trainer",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "trainer"}},
            "template": template,
        },
    }
    await client.AppsV1Api(kube_api).create_namespaced_stateful_set(namespace, statefulset)

    pod = await running_pod(client.CoreV1Api(kube_api), namespace, "trainer-0")

    assert pod.spec.node_name == node
    assert pod.spec.containers[0].resources.limits[GPU_RESOURCE] == "2"
    assert pod.status.pod_ip


async def test_pod_asking_more_gpus_than_any_node_stays_pending(
    kube_api: client.ApiClient, namespace: str, gpu_node: client.V1Node
) -> None:
    core = client.CoreV1Api(kube_api)
    too_many = int(gpu_node.status.allocatable[GPU_RESOURCE]) + 1
    await core.create_namespaced_pod(namespace, pod_manifest("greedy", gpu_node.metadata.name, gpus=too_many))

    async def unschedulable() -> bool:
        pod = await core.read_namespaced_pod("greedy", namespace)
        conditions = pod.status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    await eventually(unschedulable, "the scheduler to report Unschedulable")
    pod = await core.read_namespaced_pod("greedy", namespace)
    assert pod.status.phase == "Pending"


async def test_deleting_owner_collects_dependents(tier_api: client.ApiClient, tier_namespace: str) -> None:
    core, namespace = client.CoreV1Api(tier_api), tier_namespace
    owner = await core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    dependent = {"metadata": {"name": "dependent", "ownerReferences": [reference]}}
    await core.create_namespaced_config_map(namespace, dependent)

    await core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    async def collected() -> bool:
        try:
            await core.read_namespaced_config_map("dependent", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    await eventually(collected, "the garbage collector to delete the dependent")


async def exec_in(api: client.ApiClient, namespace: str, pod: str, command: list[str]) -> str:
    """Runs `command` in the pod through the apiserver's exec endpoint (websocket, v4.channel.k8s.io)."""
    async with WsApiClient(configuration=api.configuration) as ws:
        return await client.CoreV1Api(ws).connect_get_namespaced_pod_exec(
            pod, namespace, command=command, stdout=True, stderr=True, stdin=False, tty=False
        )


async def test_exec_runs_local_command_in_the_pods_own_sandbox(
    kube_api: client.ApiClient, namespace: str, gpu_node: client.V1Node, sandbox_root: Path | None
) -> None:
    if sandbox_root is None:
        pytest.skip("exec sandboxes exist only on the local testbed")
    core = client.CoreV1Api(kube_api)
    for name in ("vnode-a", "vnode-b"):
        await core.create_namespaced_pod(namespace, pod_manifest(name, gpu_node.metadata.name))
    for name in ("vnode-a", "vnode-b"):
        await running_pod(core, namespace, name)
    sandbox_a = sandbox_root / namespace / "vnode-a"
    # A tool a later stage would install: the sandbox's bin/ comes first on PATH.
    tool = sandbox_a / "bin" / "kubeadm"
    tool.write_text('#!/bin/sh\necho "simulated kubeadm $*"\n')
    tool.chmod(0o755)

    script = 'pwd; echo "$VK8S_POD_NAMESPACE/$VK8S_POD_NAME $VK8S_SANDBOX"; kubeadm version; echo done > marker'
    output = await exec_in(kube_api, namespace, "vnode-a", ["sh", "-c", script])
    other = await exec_in(kube_api, namespace, "vnode-b", ["sh", "-c", "pwd; ls"])

    assert output.splitlines() == [
        str(sandbox_a),
        f"{namespace}/vnode-a {sandbox_a}",
        "simulated kubeadm version",
    ]
    assert (sandbox_a / "marker").read_text() == "done\n"
    assert other.splitlines()[0] == str(sandbox_root / namespace / "vnode-b")
    assert "marker" not in other


async def test_service_account_gets_only_what_its_role_allows(tier_api: client.ApiClient, tier_namespace: str) -> None:
    kube_api, namespace = tier_api, tier_namespace
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    await core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    await rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    await rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    token = await core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    )

    reader_config = copy.copy(kube_api.configuration)
    reader_config.cert_file = reader_config.key_file = None
    reader_config.api_key = {"authorization": f"Bearer {token.status.token}"}
    async with client.ApiClient(reader_config) as reader_api:
        reader = client.CoreV1Api(reader_api)
        allowed = {}
        for verb, resource in (("list", "configmaps"), ("create", "configmaps"), ("list", "secrets")):
            review = await client.AuthorizationV1Api(reader_api).create_self_subject_access_review(
                {"spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "resource": resource}}}
            )
            allowed[verb, resource] = review.status.allowed
        await reader.list_namespaced_config_map(namespace)
        with pytest.raises(ApiException) as refused:
            await reader.list_namespaced_secret(namespace)
        who = await client.AuthenticationV1Api(reader_api).create_self_subject_review({})

    assert allowed == {("list", "configmaps"): True, ("create", "configmaps"): False, ("list", "secrets"): False}
    assert refused.value.status == 403
    assert who.status.user_info.username == f"system:serviceaccount:{namespace}:reader"


async def test_down_leaves_no_command_a_sandbox_was_running(tmp_path: Path) -> None:
    """A command a sandbox's exec started is still running when the testbed goes down: it goes
    too, so it cannot start inner control-plane processes afterwards. kwok stops the command it
    ran, not what that one started (`flock` runs the `kubeadm init` shim): here `sleep` under `sh`."""
    layout = StateLayout(tmp_path / "testbed")
    with private_testbed(layout, TEST_FLEET) as plane:
        api = await new_api_client(plane.kubeconfig)
        async with api:
            core = client.CoreV1Api(api)
            key, value = FAKE_NODE_ANNOTATION
            node = next(n.metadata.name for n in (await core.list_node()).items if n.metadata.annotations.get(key) == value)
            await core.create_namespaced_pod("default", pod_manifest("shim", node))
            await running_pod(core, "default", "shim")
            running = asyncio.create_task(exec_in(api, "default", "shim", ["sh", "-c", "sleep 600 & echo $! > shim.pid; wait"]))
            pid_file = layout.sandboxes / "default" / "shim" / "shim.pid"
            pid = int(await eventually(lambda: _read_text(pid_file), "the command to start"))
            lifecycle.stop(layout)
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert start_time(pid) is None, f"the sandbox's command {pid} outlived the testbed"


async def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None

"""Real host nodes: kubelets with containerd and runc register as GPU hosts, run pods, hand out fake
GPUs through the kubelet's device manager, honour fixed pod addresses, and bind claims."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from kubernetes.aio import client

from libs.kube import name_of
from tests.integration.conftest import REAL_FLEET
from tests.integration.test_testbed import exec_in, pod_manifest
from tests.support.pods import running_pod
from tests.support.wait import eventually
from vk8s.testbed.config import GPU_PRODUCT_LABEL, GPU_RESOURCE, VNODE_IP_POOL, ZONE_LABEL, StateLayout
from vk8s.testbed.fixtures import ControlPlane
from vk8s.testbed.lifecycle import read_ready

IP_ANNOTATION = "cni.projectcalico.org/ipAddrs"


def toolbox_pod(name: str, node: str, *, gpus: int = 0, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod of the toolbox image, which every real node has imported (no registry is reachable)."""
    return pod_manifest(name, node, gpus=gpus, tier="real", annotations=annotations)


async def test_real_nodes_register_as_gpu_hosts(real_api: client.ApiClient, real_control_plane: ControlPlane) -> None:
    fleet = real_control_plane.fleet
    assert fleet is not None
    nodes = (await client.CoreV1Api(real_api).list_node()).items

    assert sorted(name_of(node) for node in nodes) == fleet.node_names()
    for index, node in enumerate(sorted(nodes, key=name_of)):
        assert node.status.node_info.container_runtime_version.startswith("containerd://")
        # Capacity the device plugin advertised, not a number written into the Node.
        assert node.status.allocatable[GPU_RESOURCE] == str(fleet.gpus_per_node)
        assert node.metadata.labels[GPU_PRODUCT_LABEL] == fleet.gpu_model
        assert node.metadata.labels[ZONE_LABEL] == fleet.zones[index % len(fleet.zones)]
        assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == fleet.node_address(index)
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


async def test_gpus_are_handed_out_once(
    real_api: client.ApiClient, real_namespace: str, real_control_plane: ControlPlane
) -> None:
    core = client.CoreV1Api(real_api)
    node = "gpu-node-0"
    for name in ("first", "second"):
        await core.create_namespaced_pod(real_namespace, toolbox_pod(name, node, gpus=2))
    seen = {}
    for name in ("first", "second"):
        await running_pod(core, real_namespace, name)
        output = await exec_in(
            real_api, real_namespace, name, ["sh", "-c", 'echo "$NVIDIA_VISIBLE_DEVICES"; ls /dev | grep "^nvidia[0-9]"']
        )
        ids, *devices = output.split()
        seen[name] = (ids.split(","), devices)
    await core.create_namespaced_pod(real_namespace, toolbox_pod("third", node, gpus=2))

    async def unschedulable() -> str | None:
        pod = await core.read_namespaced_pod("third", real_namespace)
        condition = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        return condition.message if condition is not None and condition.reason == "Unschedulable" else None

    message = await eventually(unschedulable, "the scheduler to refuse the third pod")

    (first_ids, first_devices), (second_ids, second_devices) = seen["first"], seen["second"]
    assert len(first_ids) == len(second_ids) == 2
    assert len(first_devices) == len(second_devices) == 2
    assert not set(first_ids) & set(second_ids), "no GPU is given twice"
    assert all(gpu_id.startswith(f"GPU-{node}-") for gpu_id in first_ids + second_ids)
    # Which GPUs a pod got is visible inside it: its device nodes are the ones its ids name.
    assert sorted(f"nvidia{gpu_id.rsplit('-', 1)[1]}" for gpu_id in first_ids) == sorted(first_devices)
    assert "Insufficient nvidia.com/gpu" in message
    assert (await core.read_namespaced_pod("third", real_namespace)).status.phase == "Pending"


async def test_fixed_address_and_claim_of_a_vnode_like_statefulset(
    real_api: client.ApiClient, real_namespace: str
) -> None:
    address = str(VNODE_IP_POOL[17])
    node = "gpu-node-1"
    template = toolbox_pod("vnode", node, gpus=1, annotations={IP_ANNOTATION: json.dumps([address])})
    template["spec"]["containers"][0]["volumeMounts"] = [{"name": "state", "mountPath": "/state"}]
    statefulset = {
        "metadata": {"name": "vnode"},
        "spec": {
            "serviceName": "vnode",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "vnode"}},
            "template": template,
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "state", "annotations": {"volume.kubernetes.io/selected-node": node}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            ],
        },
    }
    await client.AppsV1Api(real_api).create_namespaced_stateful_set(real_namespace, statefulset)
    core = client.CoreV1Api(real_api)

    pod = await running_pod(core, real_namespace, "vnode-0")
    written = await exec_in(real_api, real_namespace, "vnode-0", ["sh", "-c", "echo kept > /state/file; cat /state/file"])
    interfaces = await exec_in(real_api, real_namespace, "vnode-0", ["ip", "-4", "-o", "addr", "show", "eth0"])
    claim = await core.read_namespaced_persistent_volume_claim("state-vnode-0", real_namespace)

    assert pod.status.pod_ip == address
    assert f"inet {address}/{VNODE_IP_POOL.prefixlen}" in interfaces
    assert written.strip() == "kept"
    assert claim.status.phase == "Bound"


async def test_pods_on_different_nodes_reach_each_other(real_api: client.ApiClient, real_namespace: str) -> None:
    core = client.CoreV1Api(real_api)
    await core.create_namespaced_pod(real_namespace, toolbox_pod("left", "gpu-node-0"))
    await core.create_namespaced_pod(real_namespace, toolbox_pod("right", "gpu-node-1"))
    await running_pod(core, real_namespace, "left")
    right = await running_pod(core, real_namespace, "right")
    right_ip = right.status.pod_ip
    assert right_ip is not None, "a running pod has an IP"

    output = await exec_in(real_api, real_namespace, "left", ["ping", "-c", "1", "-W", "5", right_ip])

    assert "1 packets received" in output


async def test_the_proxy_reaches_into_the_testbed_and_nowhere_else(real_control_plane: ControlPlane) -> None:
    ready = read_ready(StateLayout(real_control_plane.kubeconfig.parent))
    assert ready is not None and ready.proxy_url is not None
    kubelet = f"https://{REAL_FLEET.node_address(0)}:10250/healthz"
    async with aiohttp.ClientSession() as session:
        # The kubelet's own TLS answers through the tunnel; it wants credentials.
        async with session.get(kubelet, proxy=ready.proxy_url, ssl=False) as response:
            reached = response.status
        with pytest.raises(aiohttp.ClientHttpProxyError) as refused:
            await session.get("https://127.0.0.1:1/", proxy=ready.proxy_url, ssl=False)

    assert reached == 401
    assert refused.value.status == 403

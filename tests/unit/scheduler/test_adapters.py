"""Kubernetes objects into inventory values; the ledger's wire format; settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from kubernetes.aio import client

from libs.kube.vnodes import platform_namespace
from services.scheduler.adapters.inventory import DEFAULT_MAX_PODS, host_node, pod_requests, pod_usage
from services.scheduler.adapters.ledger import cluster_key, decode_bookings, encode_bookings, node_key
from services.scheduler.logic import (
    Booking,
    PodUsage,
    Reservation,
    ReservationState,
    ReservedVNode,
    Resources,
    Taint,
    placeholder_pod,
)
from services.scheduler.settings import SchedulerSettings

GI = 1 << 30
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def v1_node(
    *, allocatable: dict[str, str], labels: dict[str, str] | None = None, taints: list[client.V1Taint] | None = None,
    unschedulable: bool | None = None,
) -> client.V1Node:
    return client.V1Node(
        metadata=client.V1ObjectMeta(name="gpu-node-1", labels=labels),
        spec=client.V1NodeSpec(taints=taints, unschedulable=unschedulable),
        status=client.V1NodeStatus(allocatable=allocatable),
    )


def container(
    requests: dict[str, str] | None = None, limits: dict[str, str] | None = None, **extra: object
) -> client.V1Container:
    return client.V1Container(
        name="c", image="x", resources=client.V1ResourceRequirements(requests=requests, limits=limits), **extra
    )


def v1_pod(
    containers: list[client.V1Container],
    *,
    node: str | None = "gpu-node-1",
    phase: str = "Running",
    labels: dict[str, str] | None = None,
    init_containers: list[client.V1Container] | None = None,
    overhead: dict[str, str] | None = None,
) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", namespace="team", labels=labels),
        spec=client.V1PodSpec(
            node_name=node, containers=containers, init_containers=init_containers, overhead=overhead
        ),
        status=client.V1PodStatus(phase=phase),
    )


def test_a_gpu_node_becomes_a_host_node() -> None:
    node = v1_node(
        allocatable={"cpu": "95500m", "memory": "1Ti", "nvidia.com/gpu": "8", "pods": "110"},
        labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "topology.kubernetes.io/zone": "zone-a"},
        taints=[
            client.V1Taint(key="nvidia.com/gpu", effect="NoSchedule"),
            client.V1Taint(key="a", value="b", effect="NoExecute"),
        ],
        unschedulable=True,
    )

    host = host_node(node)

    assert host.allocatable == Resources(8, 95_500, 1 << 40, 110)
    assert host.gpu_model == "NVIDIA-A100-SXM4-80GB"
    assert host.zone == "zone-a"
    assert host.taints == (Taint("nvidia.com/gpu", "", "NoSchedule"), Taint("a", "b", "NoExecute"))
    assert host.cordoned


def test_a_node_without_gpus_or_pod_capacity() -> None:
    host = host_node(v1_node(allocatable={"cpu": "4", "memory": "8Gi"}))

    assert host.allocatable == Resources(0, 4000, 8 * GI, DEFAULT_MAX_PODS)
    assert host.gpu_model is None and host.zone is None and not host.cordoned


def test_pod_requests_follow_kube_scheduler() -> None:
    pod = v1_pod(
        [container({"cpu": "1", "memory": "1Gi"}), container(limits={"cpu": "500m", "nvidia.com/gpu": "2"})],
        init_containers=[
            container({"cpu": "4", "memory": "512Mi"}),  # a big init step, done before the containers start
            container({"cpu": "250m", "memory": "256Mi"}, restart_policy="Always"),  # a sidecar, runs alongside
        ],
        overhead={"cpu": "100m", "memory": "64Mi"},
    )

    assert pod_requests(pod) == Resources(
        gpus=2, cpu_millis=4000 + 100, memory_bytes=GI + 256 * (1 << 20) + 64 * (1 << 20), pods=1
    )


def test_finished_and_unbound_pods_use_nothing() -> None:
    assert pod_usage(v1_pod([container({"cpu": "1"})], phase="Succeeded")) is None
    assert pod_usage(v1_pod([container({"cpu": "1"})], phase="Failed")) is None
    assert pod_usage(v1_pod([container({"cpu": "1"})], node=None, phase="Pending")) is None
    assert pod_usage(v1_pod([container({"cpu": "1"})], phase="Pending")) is not None


VNODE_LABELS = {
    "app": "vk8s",
    "clusterName": "team-a",
    "vnode": "worker-1",
    "role": "worker",
    "vk8s.skt.co.kr/cluster-uid": "uid-a",
    "vk8s.skt.co.kr/tenant-namespace": "team",
}
PLATFORM_NAMESPACE = platform_namespace("team", "team-a")


def without(label: str) -> dict[str, str]:
    return {k: v for k, v in VNODE_LABELS.items() if k != label}


def statefulset_owner(name: str, *, kind: str = "StatefulSet", controller: bool = True) -> client.V1OwnerReference:
    return client.V1OwnerReference(api_version="apps/v1", kind=kind, name=name, uid="sts-uid", controller=controller)


def gpu_pod(
    name: str,
    labels: dict[str, str],
    owners: list[client.V1OwnerReference] | None,
    namespace: str = PLATFORM_NAMESPACE,
) -> client.V1Pod:
    pod = v1_pod([container(limits={"nvidia.com/gpu": "4"})], labels=labels)
    pod.metadata = client.V1ObjectMeta(name=name, namespace=namespace, labels=labels, owner_references=owners)
    return pod


def test_a_vnode_pod_is_told_by_its_name_owner_namespace_and_cluster_uid() -> None:
    usage = pod_usage(gpu_pod("team-a-worker-1-0", VNODE_LABELS, [statefulset_owner("team-a-worker-1")]))

    assert usage is not None and usage.vnode == ("uid-a", "worker-1")


@pytest.mark.parametrize(
    ("name", "labels", "owners", "namespace"),
    [
        pytest.param("trainer", VNODE_LABELS, None, PLATFORM_NAMESPACE, id="a tenant pod copying the labels"),
        pytest.param(
            "team-a-worker-1-0", VNODE_LABELS, [statefulset_owner("team-a-worker-1")], "team",
            id="a look-alike in the tenant namespace",
        ),
        pytest.param(
            "team-a-worker-1-0", without("vk8s.skt.co.kr/tenant-namespace"), [statefulset_owner("team-a-worker-1")],
            PLATFORM_NAMESPACE, id="no tenant namespace",
        ),
        pytest.param(
            "trainer-0", VNODE_LABELS, [statefulset_owner("trainer")], PLATFORM_NAMESPACE, id="a tenant StatefulSet"
        ),
        pytest.param(
            "team-a-worker-1-0", VNODE_LABELS, [statefulset_owner("team-a-worker-1", kind="ReplicaSet")],
            PLATFORM_NAMESPACE, id="another controller",
        ),
        pytest.param(
            "team-a-worker-1-0", VNODE_LABELS, [statefulset_owner("team-a-worker-1", controller=False)],
            PLATFORM_NAMESPACE, id="not the controller",
        ),
        pytest.param(
            "team-a-worker-1-0", without("vk8s.skt.co.kr/cluster-uid"), [statefulset_owner("team-a-worker-1")],
            PLATFORM_NAMESPACE, id="no cluster uid",
        ),
        pytest.param(
            "team-a-worker-1-0", {"app": "trainer"}, [statefulset_owner("team-a-worker-1")], PLATFORM_NAMESPACE,
            id="no labels",
        ),
    ],
)  # fmt: skip
def test_other_pods_cover_no_booking(
    name: str, labels: dict[str, str], owners: list[client.V1OwnerReference] | None, namespace: str
) -> None:
    usage = pod_usage(gpu_pod(name, labels, owners, namespace))

    assert usage is not None and usage.vnode is None
    assert usage.requests.gpus == 4  # it still takes its GPUs from the node


def test_a_placeholder_is_told_by_its_name_label_and_namespace() -> None:
    reservation = Reservation(
        cluster_id="team/team-a", uid="uid-a", generation=1, state=ReservationState.HELD, placed_at=NOW,
        vnodes=(ReservedVNode(vnode="worker-1", role="worker", host_node="gpu-node-1", gpus=4, cpu_millis=8000,
                              memory_bytes=32 * GI),),
    )  # fmt: skip
    body = placeholder_pod(reservation, reservation.vnodes[0], "pause:1")
    pod = client.ApiClient().deserialize(json.dumps(body), "V1Pod", None)
    pod.status = client.V1PodStatus(phase="Running")

    usage = pod_usage(pod)

    assert usage == PodUsage("gpu-node-1", Resources(4, 8000, 32 * GI, 1), ("uid-a", "worker-1"), placeholder=True)
    assert body["metadata"]["name"] == "team-a-worker-1-hold"
    assert body["metadata"]["finalizers"] == ["vk8s.skt.co.kr/placeholder"]
    assert body["metadata"]["namespace"] == PLATFORM_NAMESPACE and "ownerReferences" not in body["metadata"]
    pod.metadata.namespace = "team"  # a look-alike in the tenant's namespace: just a pod
    assert pod_usage(pod) == PodUsage("gpu-node-1", Resources(4, 8000, 32 * GI, 1))


def test_bookings_round_trip_through_the_wire_format() -> None:
    bookings = {
        ("uid-2", "w"): Booking("uid-2", "team/b", "w", Resources(1, 500, GI, 1)),
        ("uid-1", "m"): Booking("uid-1", "team/a", "m", Resources(0, 2000, 4 * GI, 1)),
    }

    raw = encode_bookings(bookings)

    assert decode_bookings(raw) == bookings
    assert b'"clusterId":"team/a"' in raw
    assert decode_bookings(None) == {}


def test_ledger_keys() -> None:
    assert cluster_key("clusters", "team/a") == "clusters.team.a"
    assert node_key("gpu-1.example.com") == "nodes.gpu-1.example.com"


def test_settings_read_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VK8S_SCHEDULER_HOLD_S", "60")
    monkeypatch.setenv("VK8S_SCHEDULER_NODE_SELECTOR", "pool=gpu")
    monkeypatch.setenv("VK8S_SCHEDULER_NATS_URL", "nats://nats:4222")

    settings = SchedulerSettings()

    assert settings.hold_s == 60
    assert settings.node_selector == "pool=gpu"
    assert settings.nats_url == "nats://nats:4222"

"""The vnode service end to end against the testbed and a real NATS: events in, vNode objects on
the host cluster and answers out."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from nats.js import JetStreamContext

from libs.api.models import Vk8sSpec
from libs.events import STREAM_NAME, Envelope
from libs.events.catalog import (
    ClusterAccepted,
    ClusterDeleteRequested,
    ClusterIPsAllocated,
    ClusterUpdated,
    ClusterVNodesReady,
    VNodePlacement,
)
from libs.kube import GROUP, PLURAL, VERSION, name_of
from libs.kube.vnodes import RETAINED_VOLUMES_ANNOTATION, cluster_labels, platform_namespace
from libs.runtime import Service
from services.vnode.logic import RETAIN_VOLUMES_ANNOTATION
from tests.integration.vnode.conftest import Bus
from tests.support.events import spec_document
from tests.support.wait import eventually

CreateVk8s = Callable[..., Awaitable[dict[str, Any]]]
IPS = {"master": "10.200.0.2", "worker-0": "10.200.0.3", "worker-1": "10.200.0.4"}


@dataclass
class Cluster:
    """A Vk8s object the pipeline has accepted, and what the tests publish for it."""

    bus: Bus
    vk8s: dict[str, Any]
    spec: Vk8sSpec
    labels: dict[str, str]
    generation: int = 1
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.vk8s["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.vk8s["metadata"]["namespace"]

    @property
    def uid(self) -> str:
        return self.vk8s["metadata"]["uid"]

    @property
    def platform_namespace(self) -> str:
        """Where the vnode stage puts the cluster's objects."""
        return platform_namespace(self.namespace, self.name)

    @property
    def cluster_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def accept(self) -> None:
        await self.bus.publish(
            ClusterAccepted(
                name=self.name,
                namespace=self.namespace,
                spec=self.spec,
                uid=self.uid,
                generation=self.generation,
                labels=self.labels,
            ),
            self.cluster_id,
        )

    async def update(self, *, paused: bool = False, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        payload = ClusterUpdated(
            name=self.name,
            namespace=self.namespace,
            spec=self.spec,
            uid=self.uid,
            generation=self.generation,
            labels=self.labels,
            annotations=self.annotations,
            paused=paused,
        )
        await self.bus.publish(payload, self.cluster_id)

    async def allocate(self, hosts: dict[str, str]) -> Envelope[ClusterIPsAllocated]:
        placements = [
            VNodePlacement(vnode=node.name, role=node.role.value, host_node=hosts[node.name], gpus=node.gpus())
            for node in self.spec.nodes
        ]
        payload = ClusterIPsAllocated(
            generation=self.generation,
            vnode_ips={node.name: IPS[node.name] for node in self.spec.nodes},
            pod_cidr="90.244.0.0/16",
            service_cidr="90.96.0.0/12",
            placements=placements,
        )
        return await self.bus.publish(payload, self.cluster_id)

    async def ready(self) -> Envelope[ClusterVNodesReady]:
        envelope = await self.bus.next("cluster.vnodes.ready")
        assert envelope.cluster_id == self.cluster_id
        return envelope


@pytest.fixture
async def cluster(bus: Bus, vk8s_object: CreateVk8s) -> Cluster:
    spec = Vk8sSpec.model_validate(
        {**spec_document(gpus=1, workers=1), "ports": [{"name": "kubeflow", "port": 80, "targetPort": 8080}]}
    )
    labels = {"team": "vision"}
    created = Cluster(bus, await vk8s_object("team-a", spec, labels), spec, labels)
    await created.accept()
    return created


async def statefulset(kube_api: client.ApiClient, cluster: Cluster, vnode: str) -> client.V1StatefulSet:
    apps = client.AppsV1Api(kube_api)
    return await apps.read_namespaced_stateful_set(f"{cluster.name}-{vnode}", cluster.platform_namespace)


async def test_allocated_cluster_gets_running_vnodes_on_the_chosen_hosts(
    kube_api: client.ApiClient, cluster: Cluster, gpu_hosts: list[str], vnode_service: Service
) -> None:
    allocation = await cluster.allocate({"master": gpu_hosts[0], "worker-0": gpu_hosts[1]})

    answer = await cluster.ready()

    assert answer.causation_id == allocation.id and answer.correlation_id == allocation.correlation_id
    ready = answer.data
    assert ready.generation == 1 and ready.pod_cidr == "90.244.0.0/16"
    assert [(v.vnode, v.role, v.pod, v.host_node, v.ip, v.gpus) for v in ready.vnodes] == [
        ("master", "master", "team-a-master-0", gpu_hosts[0], "10.200.0.2", 1),
        ("worker-0", "worker", "team-a-worker-0-0", gpu_hosts[1], "10.200.0.3", 1),
    ]
    core = client.CoreV1Api(kube_api)
    for vnode in ready.vnodes:
        pod = await core.read_namespaced_pod(vnode.pod, cluster.platform_namespace)
        container = pod.spec.containers[0]
        assert pod.status.phase == "Running"
        assert pod.spec.node_name == vnode.host_node
        # 1 of the host's 8 GPUs: requested and limited to exactly one.
        assert container.resources.limits["nvidia.com/gpu"] == "1"
        assert container.resources.requests["nvidia.com/gpu"] == "1"
        assert container.security_context.privileged is True
        assert pod.metadata.annotations["cni.projectcalico.org/ipAddrs"] == json.dumps([vnode.ip])
    master = await statefulset(kube_api, cluster, "master")
    assert master.metadata.labels["team"] == "vision"
    assert master.metadata.labels["clusterName"] == "team-a"
    assert master.metadata.labels["sidecar.istio.io/inject"] == "false"
    # No owner reference across namespaces (the garbage collector would delete it): labels say whose.
    assert not master.metadata.owner_references
    assert master.metadata.labels["vk8s.skt.co.kr/cluster-uid"] == cluster.uid
    assert master.metadata.labels["vk8s.skt.co.kr/tenant-namespace"] == cluster.namespace
    tenant_pods = await core.list_namespaced_pod(cluster.namespace)
    assert not tenant_pods.items, "nothing of the vNodes is in the tenant's namespace"
    networking = client.NetworkingV1Api(kube_api)
    policy = await networking.read_namespaced_network_policy("team-a-vnodes", cluster.platform_namespace)
    assert policy.spec.pod_selector.match_labels == {"app": "vk8s", "clusterName": "team-a"}
    assert policy.spec.policy_types == ["Ingress", "Egress"]
    mounts = {m.mount_path: m for m in master.spec.template.spec.containers[0].volume_mounts}
    assert mounts["/lib/modules"].read_only and mounts["/usr/src"].read_only
    claims = await core.list_namespaced_persistent_volume_claim(
        cluster.platform_namespace, label_selector="clusterName=team-a"
    )
    assert sorted(name_of(c) for c in claims.items) == [
        "node-state-team-a-master-0",
        "node-state-team-a-worker-0-0",
    ]
    headless = await core.read_namespaced_service("team-a-vnodes", cluster.platform_namespace)
    assert headless.spec.cluster_ip == "None"
    ports = await core.read_namespaced_service("team-a-ports", cluster.platform_namespace)
    assert ports.spec.type == "NodePort" and ports.spec.ports[0].port == 80 and ports.spec.ports[0].node_port
    assert ports.spec.selector["role"] == "master"
    metrics = vnode_service.metrics_registry
    assert metrics.get_sample_value("vk8s_vnode_objects_applied_total", {"kind": "StatefulSet"}) == 2
    assert metrics.get_sample_value("vk8s_vnode_pods_ready_seconds_count") == 1
    assert metrics.get_sample_value("vk8s_vnode_vnodes", {"state": "running"}) == 2


async def test_an_allocation_handled_before_any_spec_event_gets_running_vnodes(
    kube_api: client.ApiClient, bus: Bus, vk8s_object: CreateVk8s, gpu_hosts: list[str], js: JetStreamContext
) -> None:
    """No cluster.accepted at all: the spec comes from the Vk8s object, without waiting."""
    spec = Vk8sSpec.model_validate(spec_document(gpus=1, workers=1))
    alone = Cluster(bus, await vk8s_object("team-b", spec, {"team": "nlp"}), spec, {"team": "nlp"})
    allocation = await alone.allocate({"master": gpu_hosts[0], "worker-0": gpu_hosts[1]})

    answer = await alone.ready()

    assert answer.causation_id == allocation.id
    assert [v.vnode for v in answer.data.vnodes] == ["master", "worker-0"]
    master = await statefulset(kube_api, alone, "master")
    assert master.metadata.labels["team"] == "nlp"
    info = await js.consumer_info(STREAM_NAME, "vnode")
    assert info.num_redelivered == 0  # handled at its first delivery: nothing waited for a spec event


async def test_label_changes_reach_the_statefulsets(
    kube_api: client.ApiClient, cluster: Cluster, gpu_hosts: list[str]
) -> None:
    await cluster.allocate({"master": gpu_hosts[0], "worker-0": gpu_hosts[1]})
    await cluster.ready()
    core = client.CoreV1Api(kube_api)
    nodeport = (await core.read_namespaced_service("team-a-ports", cluster.platform_namespace)).spec

    await cluster.update(labels={"team": "nlp", "tier": "gold"})

    async def relabelled() -> bool:
        labels = (await statefulset(kube_api, cluster, "worker-0")).metadata.labels
        return labels.get("team") == "nlp" and labels.get("tier") == "gold"

    await eventually(relabelled, "the StatefulSets to carry the new labels")
    await cluster.update(labels={"team": "nlp"})

    async def label_removed() -> bool:
        return "tier" not in ((await statefulset(kube_api, cluster, "master")).metadata.labels or {})

    await eventually(label_removed, "the removed label to go from the StatefulSets")
    again = (await core.read_namespaced_service("team-a-ports", cluster.platform_namespace)).spec
    assert again.ports[0].node_port == nodeport.ports[0].node_port, "re-applying keeps the allocated node port"
    pod = await core.read_namespaced_pod("team-a-master-0", cluster.platform_namespace)
    assert pod.status.phase == "Running", "relabelling does not restart vNodes"


async def test_pause_stops_the_vnodes_and_resume_brings_them_back_on_the_new_placement(
    kube_api: client.ApiClient, cluster: Cluster, gpu_hosts: list[str]
) -> None:
    await cluster.allocate({"master": gpu_hosts[0], "worker-0": gpu_hosts[1]})
    await cluster.ready()
    core = client.CoreV1Api(kube_api)

    await cluster.update(paused=True)

    paused = await cluster.bus.next("cluster.paused")
    assert paused.data.generation == 1
    for vnode in ("master", "worker-0"):
        found = await statefulset(kube_api, cluster, vnode)
        assert found.spec.replicas == 0 and not found.status.replicas
    assert not (await core.list_namespaced_pod(cluster.platform_namespace, label_selector="clusterName=team-a")).items

    await cluster.update(paused=False)
    await cluster.allocate({"master": gpu_hosts[1], "worker-0": gpu_hosts[1]})  # the scheduler re-placed the master

    ready = (await cluster.ready()).data
    assert [(v.pod, v.host_node) for v in ready.vnodes] == [
        ("team-a-master-0", gpu_hosts[1]),
        ("team-a-worker-0-0", gpu_hosts[1]),
    ]
    master = await core.read_namespaced_pod("team-a-master-0", cluster.platform_namespace)
    assert master.spec.node_name == gpu_hosts[1] and master.status.phase == "Running"
    assert (await statefulset(kube_api, cluster, "master")).spec.replicas == 1


async def test_added_worker_gets_its_statefulset_and_is_listed_ready(
    kube_api: client.ApiClient, cluster: Cluster, gpu_hosts: list[str]
) -> None:
    await cluster.allocate({"master": gpu_hosts[0], "worker-0": gpu_hosts[1]})
    await cluster.ready()
    nodes = spec_document(gpus=1, workers=2)["nodes"]
    grown = Vk8sSpec.model_validate({**cluster.spec.model_dump(by_alias=True), "nodes": nodes})

    await cluster.update(spec=grown, generation=2)
    await cluster.allocate({"master": gpu_hosts[0], "worker-0": gpu_hosts[1], "worker-1": gpu_hosts[0]})

    ready = (await cluster.ready()).data
    assert ready.generation == 2
    assert [v.pod for v in ready.vnodes] == ["team-a-master-0", "team-a-worker-0-0", "team-a-worker-1-0"]
    worker = await statefulset(kube_api, cluster, "worker-1")
    assert worker.spec.template.spec.node_name == gpu_hosts[0]


async def test_delete_frees_objects_and_volumes_then_answers(
    kube_api: client.ApiClient, cluster: Cluster, gpu_hosts: list[str]
) -> None:
    await cluster.allocate({"master": gpu_hosts[0], "worker-0": gpu_hosts[1]})
    await cluster.ready()
    custom, core, apps = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    # As the user does: the finalizer keeps the object until cluster.deleted.
    await custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, cluster.name)

    await cluster.bus.publish(ClusterDeleteRequested(uid=cluster.uid), cluster.cluster_id)

    deleted = await cluster.bus.next("cluster.vnodes.deleted")
    assert deleted.data.uid == cluster.uid
    selector = "clusterName=team-a"
    assert not (await apps.list_namespaced_stateful_set(cluster.platform_namespace, label_selector=selector)).items
    assert not (await core.list_namespaced_service(cluster.platform_namespace, label_selector=selector)).items
    claims = await core.list_namespaced_persistent_volume_claim(cluster.platform_namespace, label_selector=selector)
    assert not claims.items
    assert not (await core.list_namespaced_pod(cluster.platform_namespace, label_selector=selector)).items
    with pytest.raises(ApiException):
        await core.read_namespaced_pod("team-a-master-0", cluster.platform_namespace)


async def test_a_cluster_deleted_before_its_vnodes_ran_is_not_held_up_by_its_placeholder(
    kube_api: client.ApiClient, cluster: Cluster
) -> None:
    """The scheduler's placeholder keeps its finalizer until the booking is freed, after
    cluster.vnodes.deleted: waiting for it here would stall the delete chain."""
    core = client.CoreV1Api(kube_api)
    labels = {
        **cluster_labels(cluster.namespace, cluster.name, cluster.uid),
        "vnode": "master",
        "vk8s.skt.co.kr/component": "placeholder",
    }
    placeholder = {
        "metadata": {"name": "team-a-master-hold", "labels": labels, "finalizers": ["vk8s.skt.co.kr/placeholder"]},
        "spec": {"nodeName": "no-such-node", "containers": [{"name": "hold", "image": "registry.invalid/pause:1"}]},
    }
    await core.create_namespaced_pod(cluster.platform_namespace, placeholder)
    custom = client.CustomObjectsApi(kube_api)
    await custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, cluster.name)
    try:
        await cluster.bus.publish(ClusterDeleteRequested(uid=cluster.uid), cluster.cluster_id)

        deleted = await cluster.bus.next("cluster.vnodes.deleted")
        assert deleted.data.uid == cluster.uid
    finally:  # as the scheduler does once the booking is gone
        released = {"metadata": {"finalizers": None}}
        await core.patch_namespaced_pod("team-a-master-hold", cluster.platform_namespace, released)


async def test_a_redelivered_delete_keeps_retained_volumes(
    kube_api: client.ApiClient, cluster: Cluster, gpu_hosts: list[str]
) -> None:
    """The first delete.requested deletes everything but the retained volumes and the record; the
    same request again (a redelivery after the record went, while the object waits for
    cluster.deleted, and once the object is gone too) must not fall back to the default and
    delete them."""
    custom, core = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api)
    retained = {RETAIN_VOLUMES_ANNOTATION: "true"}
    await patch_vk8s(custom, cluster, {"metadata": {"annotations": retained}})
    await cluster.update(annotations=retained)
    await cluster.allocate({"master": gpu_hosts[0], "worker-0": gpu_hosts[1]})
    await cluster.ready()
    selector = "clusterName=team-a"

    async def claims() -> list[str]:
        listing = await core.list_namespaced_persistent_volume_claim(
            cluster.platform_namespace, label_selector=selector
        )
        return sorted(name_of(claim) for claim in listing.items)

    kept = await eventually(lambda: _nonempty(claims()), "the vNodes' volume claims")
    await custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, cluster.name)
    await cluster.bus.publish(ClusterDeleteRequested(uid=cluster.uid), cluster.cluster_id)
    await cluster.bus.next("cluster.vnodes.deleted")
    assert await claims() == kept
    # The gateway keeps a namespace marked so, with the claims, for the operator.
    marked = await core.read_namespace(cluster.platform_namespace)
    assert marked.metadata.annotations[RETAINED_VOLUMES_ANNOTATION] == "true"

    await cluster.bus.publish(ClusterDeleteRequested(uid=cluster.uid), cluster.cluster_id)
    await cluster.bus.next("cluster.vnodes.deleted")
    assert await claims() == kept

    await patch_vk8s(custom, cluster, {"metadata": {"finalizers": None}})
    await eventually(lambda: _gone(custom, cluster), "the Vk8s object to go")
    await cluster.bus.publish(ClusterDeleteRequested(uid=cluster.uid), cluster.cluster_id)
    await cluster.bus.next("cluster.vnodes.deleted")
    assert await claims() == kept


async def patch_vk8s(custom: client.CustomObjectsApi, cluster: Cluster, patch: dict[str, Any]) -> None:
    await custom.patch_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, cluster.name, patch, _content_type="application/merge-patch+json"
    )


async def _nonempty(listing: Awaitable[list[str]]) -> list[str] | None:
    return (await listing) or None


async def _gone(custom: client.CustomObjectsApi, cluster: Cluster) -> bool:
    try:
        await custom.get_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, cluster.name)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


async def test_node_image_outside_the_allowlist_fails_the_cluster_and_creates_nothing(
    kube_api: client.ApiClient, bus: Bus, vk8s_object: CreateVk8s, gpu_hosts: list[str]
) -> None:
    # A forged acceptance (the gateway would have refused it): the vnode stage checks again.
    document = spec_document(gpus=1)
    document["nodes"][0]["image"] = "evil.example.com/root-me:v1.36"
    spec = Vk8sSpec.model_validate(document)
    forged = Cluster(bus, await vk8s_object("forged", spec), spec, {})
    await forged.accept()
    await forged.allocate({"master": gpu_hosts[0]})

    failed = await bus.next("cluster.failed")

    assert (failed.cluster_id, failed.data.stage, failed.data.reason) == (forged.cluster_id, "vnode", "ImageNotAllowed")
    assert failed.data.message == (
        "spec.nodes[0].image: 'evil.example.com/root-me:v1.36' is not from an allowed repository; "
        "allowed: ghcr.io/vk8s/kink"
    )
    selector = "clusterName=forged"
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    assert not (await apps.list_namespaced_stateful_set(forged.platform_namespace, label_selector=selector)).items
    assert not (await core.list_namespaced_service(forged.platform_namespace, label_selector=selector)).items


async def test_a_forged_delete_request_for_a_live_cluster_deletes_nothing(
    kube_api: client.ApiClient, cluster: Cluster, gpu_hosts: list[str]
) -> None:
    await cluster.allocate({"master": gpu_hosts[0], "worker-0": gpu_hosts[1]})
    await cluster.ready()
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    selector = "clusterName=team-a"
    listed = await apps.list_namespaced_stateful_set(cluster.platform_namespace, label_selector=selector)
    before = sorted(name_of(s) for s in listed.items)

    # The Vk8s object is not being deleted: the event alone must not remove anything.
    await cluster.bus.publish(ClusterDeleteRequested(uid=cluster.uid), cluster.cluster_id)
    with pytest.raises(AssertionError, match=re.escape("no cluster.vnodes.deleted")):
        await cluster.bus.next("cluster.vnodes.deleted", timeout=5)

    after = (await apps.list_namespaced_stateful_set(cluster.platform_namespace, label_selector=selector)).items
    assert sorted(name_of(s) for s in after) == before == ["team-a-master", "team-a-worker-0"]
    assert all(s.metadata.deletion_timestamp is None for s in after)
    listing = await core.list_namespaced_persistent_volume_claim(cluster.platform_namespace, label_selector=selector)
    claims = listing.items
    assert claims and all(c.metadata.deletion_timestamp is None for c in claims)

"""Host nodes and the pods bound to them, from the Kubernetes API into the Inventory.

Every pod counts, not only vNode pods: whatever else runs on a host takes its resources too.
Succeeded and Failed pods are left out by the field selector (the watch reports them as
deleted when they finish), as are pods not bound to a node yet.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

import structlog
from kubernetes.aio import client

from libs.api.models import GPU_RESOURCE
from libs.api.quantity import QuantityError, parse_quantity
from libs.events.envelope import cluster_id_of
from libs.kube import ApiClient, metadata_of, name_of, namespace_of, vnodes, watch_objects
from services.scheduler.logic import BookingKey, HostNode, Inventory, PodUsage, Resources, Taint

log = structlog.get_logger(__name__)

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
ZONE_LABEL = "topology.kubernetes.io/zone"
# Bound pods that still hold resources (what kube-scheduler counts as assigned).
ASSIGNED_PODS = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
# The kubelet's default; a node that reports no pod capacity gets it.
DEFAULT_MAX_PODS = 110


def _amount(quantities: Mapping[str, Any] | None, resource: str) -> Decimal:
    value = (quantities or {}).get(resource)
    if value is None:
        return Decimal(0)
    try:
        return parse_quantity(value)
    except QuantityError:
        log.warning("Ignoring a malformed quantity", resource=resource, value=str(value))
        return Decimal(0)


def host_node(node: client.V1Node) -> HostNode:
    allocatable = node.status.allocatable if node.status is not None else None
    labels = metadata_of(node).labels or {}
    spec = node.spec
    pods = _amount(allocatable, "pods")
    return HostNode(
        name=name_of(node),
        # Rounded down: a fraction of a core or GPU that is not there cannot be handed out.
        allocatable=Resources(
            gpus=math.floor(_amount(allocatable, GPU_RESOURCE)),
            cpu_millis=math.floor(_amount(allocatable, "cpu") * 1000),
            memory_bytes=math.floor(_amount(allocatable, "memory")),
            pods=math.floor(pods) if pods else DEFAULT_MAX_PODS,
        ),
        gpu_model=labels.get(GPU_PRODUCT_LABEL),
        zone=labels.get(ZONE_LABEL),
        taints=tuple(Taint(t.key, t.value or "", t.effect) for t in (spec.taints or ())) if spec else (),
        cordoned=bool(spec and spec.unschedulable),
    )


def _container_requests(container: Any) -> Resources:
    resources = container.resources
    requests = (resources.requests if resources else None) or {}
    limits = (resources.limits if resources else None) or {}

    # A resource with only a limit is requested at its limit (the API defaults it so).
    def amount(name: str) -> Decimal:
        return _amount(requests, name) if name in requests else _amount(limits, name)

    return Resources(
        gpus=math.ceil(amount(GPU_RESOURCE)),
        cpu_millis=math.ceil(amount("cpu") * 1000),
        memory_bytes=math.ceil(amount("memory")),
    )


def _max(a: Resources, b: Resources) -> Resources:
    return Resources(
        max(a.gpus, b.gpus), max(a.cpu_millis, b.cpu_millis), max(a.memory_bytes, b.memory_bytes), max(a.pods, b.pods)
    )


def _spec(pod: client.V1Pod) -> client.V1PodSpec:
    """A stored pod's spec: the apiserver requires one, though the client types it Optional."""
    if pod.spec is None:
        raise ValueError("a V1Pod from the apiserver without spec")
    return pod.spec


def pod_requests(pod: client.V1Pod) -> Resources:
    """The pod's effective requests as kube-scheduler computes them: containers plus sidecars,
    or the largest init step if larger, plus the pod overhead."""
    spec = _spec(pod)
    containers = Resources()
    for container in spec.containers or ():
        containers = containers + _container_requests(container)
    sidecars = Resources()
    init_peak = Resources()
    for container in spec.init_containers or ():
        requests = _container_requests(container)
        if container.restart_policy == "Always":
            sidecars = sidecars + requests
            init_peak = _max(init_peak, sidecars)
        else:
            init_peak = _max(init_peak, sidecars + requests)
    overhead = spec.overhead or {}
    return _max(containers + sidecars, init_peak) + Resources(
        gpus=0,
        cpu_millis=math.ceil(_amount(overhead, "cpu") * 1000),
        memory_bytes=math.ceil(_amount(overhead, "memory")),
        pods=1,
    )


def vnode_of(pod: client.V1Pod) -> BookingKey | None:
    """(cluster uid, vNode) when the pod is the vNode stage's pod of that vNode: labelled for it,
    named `<cluster>-<vnode>-0`, controlled by the StatefulSet `<cluster>-<vnode>` and in the
    cluster's platform namespace. Labels alone are not enough: a tenant's pod can carry them, but
    no tenant may create pods in a platform namespace."""
    if (metadata_of(pod).labels or {}).get(vnodes.APP_LABEL) != vnodes.APP:
        return None
    return _identity(pod, vnodes.pod_name, controller=vnodes.statefulset_name)


def placeholder_of(pod: client.V1Pod) -> BookingKey | None:
    """(cluster uid, vNode) when the pod is the scheduler's placeholder of that vNode: named for it,
    labelled as one, in the cluster's platform namespace."""
    if (metadata_of(pod).labels or {}).get(vnodes.COMPONENT_LABEL) != vnodes.PLACEHOLDER_COMPONENT:
        return None
    return _identity(pod, vnodes.placeholder_name, controller=None)


def _identity(
    pod: client.V1Pod,
    expected_name: Callable[[str, str], str],
    *,
    controller: Callable[[str, str], str] | None,
) -> BookingKey | None:
    """(uid, vNode) from the pod's labels, if its name is `expected_name(cluster, vNode)`, it is in
    the platform namespace of the cluster its labels name, and (`controller` given) its controller is
    the StatefulSet `controller(cluster, vNode)`."""
    metadata = metadata_of(pod)
    labels = metadata.labels or {}
    cluster = labels.get(vnodes.CLUSTER_LABEL)
    vnode = labels.get(vnodes.VNODE_LABEL)
    uid = labels.get(vnodes.CLUSTER_UID_LABEL)
    tenant_namespace = labels.get(vnodes.TENANT_NAMESPACE_LABEL)
    if not cluster or not vnode or not uid or not tenant_namespace:
        return None
    if metadata.name != expected_name(cluster, vnode):
        return None
    if metadata.namespace != vnodes.platform_namespace(tenant_namespace, cluster):
        return None
    if controller is None:
        return uid, vnode
    owner = next((o for o in metadata.owner_references or () if o.controller), None)
    if owner is None or owner.kind != "StatefulSet" or owner.name != controller(cluster, vnode):
        return None
    return uid, vnode


def pod_usage(pod: client.V1Pod) -> PodUsage | None:
    node = _spec(pod).node_name
    if not node or (pod.status is not None and pod.status.phase in ("Succeeded", "Failed")):
        return None
    if placeholder := placeholder_of(pod):
        return PodUsage(node, pod_requests(pod), placeholder, placeholder=True)
    return PodUsage(node, pod_requests(pod), vnode_of(pod))


def _pod_key(pod: client.V1Pod) -> str:
    return f"{namespace_of(pod)}/{name_of(pod)}"


class KubeInventory:
    """Keeps an Inventory in step with the API: run `watch_nodes` and `watch_pods` as tasks."""

    def __init__(
        self,
        api: ApiClient,
        inventory: Inventory,
        *,
        node_selector: str = "",
        on_growth: Callable[[], None],
        on_vnode_pod: Callable[[str, BookingKey], Awaitable[None]] | None = None,
    ):
        """`on_vnode_pod(cluster id, vNode)` runs when a vNode pod is first seen bound to a node."""
        self._core = client.CoreV1Api(api)
        self._inventory = inventory
        self._node_selector = node_selector
        self._on_growth = on_growth
        self._on_vnode_pod = on_vnode_pod
        # Bound vNode pods whose placeholder could not be removed yet (the API server failed).
        self._undisplaced: set[str] = set()
        self.nodes_synced = asyncio.Event()
        self.pods_synced = asyncio.Event()

    async def watch_nodes(self) -> None:
        seen: set[str] = set()
        async for event in watch_objects(self._core.list_node, label_selector=self._node_selector):
            grew = False
            if event.object is not None:
                name = event.object.metadata.name
                if event.type == "DELETED":
                    self._inventory.remove_node(name)
                else:
                    grew = self._inventory.upsert_node(host_node(event.object))
                if event.type == "SYNC":
                    seen.add(name)
            if event.synced:
                # The end of a (re)list: nodes that went away while no watch was running.
                for gone in self._inventory.node_names() - seen:
                    self._inventory.remove_node(gone)
                seen = set()
                self._settle(self.nodes_synced, "nodes")
            if grew:
                self._on_growth()

    async def watch_pods(self) -> None:
        seen: set[str] = set()
        async for event in watch_objects(self._core.list_pod_for_all_namespaces, field_selector=ASSIGNED_PODS):
            grew = False
            if event.object is not None:
                key = _pod_key(event.object)
                usage = None if event.type == "DELETED" else pod_usage(event.object)
                appeared = usage is not None and not self._inventory.has_pod(key)
                grew = self._inventory.upsert_pod(key, usage)
                if usage is None:
                    self._undisplaced.discard(key)
                elif (appeared or key in self._undisplaced) and usage.vnode is not None and not usage.placeholder:
                    await self._displace_placeholder(key, event.object.metadata, usage.vnode)
                if event.type == "SYNC":
                    seen.add(key)
            if event.synced:
                for gone in self._inventory.pod_keys() - seen:
                    grew |= self._inventory.upsert_pod(gone, None)
                seen = set()
                self._settle(self.pods_synced, "pods")
            if grew:
                self._on_growth()

    async def _displace_placeholder(self, key: str, metadata: client.V1ObjectMeta, vnode: BookingKey) -> None:
        """A vNode pod is bound: its placeholder goes, finalizer and all (the vnode stage deleted it
        before starting the pod; the finalizer kept its room counted until now)."""
        if self._on_vnode_pod is None:
            return
        labels = metadata.labels or {}
        cluster_id = cluster_id_of(labels[vnodes.TENANT_NAMESPACE_LABEL], labels[vnodes.CLUSTER_LABEL])
        try:
            await self._on_vnode_pod(cluster_id, vnode)
        except Exception:  # the pod's next event (a relist at the latest) tries again; the watch goes on
            self._undisplaced.add(key)
            log.exception("Deleting a displaced placeholder pod failed", cluster_id=cluster_id, vnode=vnode[1])
        else:
            self._undisplaced.discard(key)

    @staticmethod
    def _settle(synced: asyncio.Event, what: str) -> None:
        if not synced.is_set():
            log.info("Listed host inventory", what=what)
        synced.set()

"""Pure decisions of the vnode stage: what the cluster record becomes on each event, which objects
a cluster should have, and whether its vNodes have reached what a pending event waits for.

Every object lives in the cluster's platform namespace (`libs.kube.vnodes.platform_namespace`,
made by the gateway), never the tenant's. Names (see `statefulset_name`):
- StatefulSet `<cluster>-<vnode>`, pod `<cluster>-<vnode>-0`, volume claim `node-state-<cluster>-<vnode>-0`;
- headless Service `<cluster>-vnodes` (pod DNS `<pod>.<cluster>-vnodes.<namespace>.svc`);
- NodePort Service `<cluster>-ports` for spec.ports, selecting the master vNode;
- access Deployment and NodePort Service `<cluster>-access`.

vNode pods are pinned with spec.nodeName, not a nodeSelector: the vk8s scheduler already chose the
host and holds a GPU reservation there, so a second decision by kube-scheduler could only disagree
(and it would refuse a pod whose node-state claim is not bound yet). The claim template names the
host in `volume.kubernetes.io/selected-node`, as kube-scheduler would, so storage classes that wait
for the first consumer still provision on that host.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from libs.api.models import GPU_RESOURCE, NodeRole, NodeSpec, Vk8sSpec
from libs.api.validation import node_image_refusals
from libs.events import REGISTRY, Envelope, PermanentError, Reason, TransientError
from libs.events.catalog import (
    ClusterAccepted,
    ClusterFailed,
    ClusterIPsAllocated,
    ClusterPaused,
    ClusterUpdated,
    ClusterVNodesReady,
    VNodePlacement,
    VNodeRef,
)
from libs.kube.objects import GROUP
from libs.kube.vnodes import (
    APP,
    APP_LABEL,
    CLUSTER_LABEL,
    CLUSTER_UID_LABEL,
    COMPONENT_LABEL,
    PLACEHOLDER_COMPONENT,
    VNODE_COMPONENT,
    VNODE_LABEL,
    bounded,
    cluster_labels,
    placeholder_name,
    platform_namespace,
    pod_name,
    statefulset_name,
)
from services.vnode.settings import VNodeSettings

ROLE_LABEL = "role"
ISTIO_INJECT_LABEL = "sidecar.istio.io/inject"
ACCESS_COMPONENT = "access"
RETAIN_VOLUMES_ANNOTATION = f"{GROUP}/retain-volumes"
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"
# The Vk8s object's own apply record: meaningless on its dependents, and as large as its spec.
NOT_PROPAGATED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})

NODE_STATE_VOLUME = "node-state"
VNODE_CONTAINER = "vnode"
# The stage's name: its topology's service, the `stage` of the cluster.failed it publishes.
STAGE = "vnode"
ACCESS_PORT_NAME = "access"
INNER_API_SERVER_PORT = 6443

MAX_NAME = 63

# ---------------------------------------------------------------------------------------------
# Names and labels


def _service_name(cluster: str, suffix: str) -> str:
    # Service names are DNS-1035 labels: they must start with a letter, cluster names need not.
    base = f"{cluster}-{suffix}" if cluster[0].isalpha() else f"vk8s-{cluster}-{suffix}"
    return bounded(base, MAX_NAME)


def headless_service_name(cluster: str) -> str:
    return _service_name(cluster, "vnodes")


def ports_service_name(cluster: str) -> str:
    return _service_name(cluster, "ports")


def access_name(cluster: str) -> str:
    return _service_name(cluster, "access")


def network_policy_name(cluster: str) -> str:
    return _service_name(cluster, "vnodes")


def cluster_selector(uid: str) -> str:
    """Label selector of every object of one cluster incarnation (a re-created cluster of the same
    name has another uid, so a late delete of the old one cannot touch it)."""
    return f"{APP_LABEL}={APP},{CLUSTER_UID_LABEL}={uid}"


def deleted_pods_selector(uid: str) -> str:
    """The pods a delete waits for: the cluster's, but not the scheduler's placeholders. Their
    finalizer goes when the scheduler releases the reservation, after this stage's
    `cluster.vnodes.deleted`: waiting for them would wait for ever."""
    return f"{cluster_selector(uid)},{COMPONENT_LABEL}!={PLACEHOLDER_COMPONENT}"


# ---------------------------------------------------------------------------------------------
# The record this stage keeps per cluster


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Allocation(_Record):
    """The latest cluster.ips.allocated: where each vNode runs and with which IP."""

    generation: int
    placements: tuple[VNodePlacement, ...]
    vnode_ips: dict[str, str]
    pod_cidr: str
    service_cidr: str

    def placement(self, vnode: str) -> VNodePlacement | None:
        return next((p for p in self.placements if p.vnode == vnode), None)


class Awaiting(_Record):
    """An event to publish once the vNodes reach `target`: cluster.vnodes.ready (`ready`) or
    cluster.paused (`paused`), derived from `cause`, the envelope (JSON) it answers."""

    target: Literal["ready", "paused"]
    since: AwareDatetime
    cause: str

    def cause_envelope(self) -> Envelope[Any]:
        return REGISTRY.decode(json.loads(self.cause)["type"], self.cause.encode())


class ClusterRecord(_Record):
    """What this stage knows of one cluster: the last accepted spec, labels and annotations (the
    allocation event does not carry them), the last allocation, and what it waits for."""

    uid: str
    name: str
    namespace: str
    generation: int
    spec: Vk8sSpec
    labels: dict[str, str]
    annotations: dict[str, str]
    paused: bool = False
    observed_at: AwareDatetime
    """Time of the newest spec event taken in; older ones arriving late are ignored."""
    allocation: Allocation | None = None
    scaled_up: bool = False
    """The allocation has been applied with replicas 1 since the cluster last paused."""
    awaiting: Awaiting | None = None
    deleting: bool = False

    @property
    def cluster_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def platform_namespace(self) -> str:
        """Where the cluster's objects live; `namespace` is the tenant's, which holds the Vk8s."""
        return platform_namespace(self.namespace, self.name)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ClusterRecord:
        return cls.model_validate_json(raw)


@dataclass(frozen=True)
class Ignore:
    """The event needs no action; `reason` says why, for the log."""

    reason: str


def on_spec_event(
    previous: ClusterRecord | None, envelope: Envelope[ClusterAccepted] | Envelope[ClusterUpdated]
) -> ClusterRecord | Ignore:
    """The record after cluster.accepted or cluster.updated."""
    event = envelope.data
    same = previous if previous is not None and previous.uid == event.uid else None
    if same is not None and same.deleting:
        return Ignore("the cluster is being deleted")
    if same is not None and envelope.time < same.observed_at:
        return Ignore(f"older than the spec event of {same.observed_at.isoformat()} already taken in")
    paused = isinstance(event, ClusterUpdated) and event.paused
    awaiting = same.awaiting if same is not None else None
    if paused:
        # Every paused update answers with cluster.paused: releasing GPUs twice is harmless, and a
        # redelivered pause still gets its answer.
        awaiting = Awaiting(target="paused", since=envelope.time, cause=envelope.to_json().decode())
    elif awaiting is not None and awaiting.target == "paused":
        awaiting = None  # resumed before the pause completed: nobody waits for cluster.paused now
    return ClusterRecord(
        uid=event.uid,
        name=event.name,
        namespace=event.namespace,
        generation=event.generation,
        spec=event.spec,
        labels=event.labels,
        annotations=event.annotations,
        paused=paused,
        observed_at=envelope.time,
        allocation=same.allocation if same is not None else None,
        scaled_up=same is not None and same.scaled_up and not paused,
        awaiting=awaiting,
    )


def with_object_spec(
    previous: ClusterRecord | None, vk8s: Mapping[str, Any], *, allocated_for: str | None = None
) -> ClusterRecord | None:
    """The record for an allocation whose spec event is not taken in yet, from the live Vk8s object
    that event was made from: its uid, generation, spec, labels and annotations, keeping what the
    record of that uid knows besides. A record of another uid is the earlier object's: replaced
    when the allocation names the live object (`allocated_for`), else None (an allocation of an
    earlier version names none: it may be the old object's). `observed_at` stays at the object's
    creation, before every spec event of it, so each one is still taken in when it comes."""
    metadata = vk8s["metadata"]
    if previous is not None and previous.uid != metadata["uid"]:
        if allocated_for != metadata["uid"]:
            return None
        previous = None
    # This stage uses no Kubeflow settings, and a plain password must not reach its records.
    spec = Vk8sSpec.model_validate(vk8s["spec"]).model_copy(update={"kubeflow": None})
    fields = {
        "generation": metadata["generation"],
        "spec": spec,
        "labels": metadata.get("labels") or {},
        "annotations": metadata.get("annotations") or {},
    }
    if previous is not None:
        return previous.model_copy(update=fields)
    return ClusterRecord(
        uid=metadata["uid"],
        name=metadata["name"],
        namespace=metadata["namespace"],
        observed_at=datetime.fromisoformat(metadata["creationTimestamp"]),
        **fields,
    )


def on_allocated(
    record: ClusterRecord, envelope: Envelope[ClusterIPsAllocated], now: datetime, *, resume_grace_s: float
) -> ClusterRecord | Ignore:
    """The record after cluster.ips.allocated: scaled up, waiting for every placed vNode to run."""
    event = envelope.data
    if record.deleting:
        return Ignore("the cluster is being deleted")
    if event.generation > record.generation:
        raise TransientError(
            f"allocation for generation {event.generation}, but the spec of generation {record.generation} is the "
            "newest taken in yet",
            reason=Reason.SPEC_NOT_RECORDED,
        )
    if record.allocation is not None and event.generation < record.allocation.generation:
        return Ignore(f"stale: generation {record.allocation.generation} is allocated already")
    if record.paused:
        # A resume reaches the scheduler and us by separate paths; ours may still be on its way. The
        # consumer's doubling backoff spaces the tries (settings check they outlast the grace).
        if now - envelope.time < timedelta(seconds=resume_grace_s):
            raise TransientError("the cluster is recorded as paused; waiting for its resume", reason=Reason.PAUSED)
        return Ignore("the cluster is paused")
    missing = sorted(p.vnode for p in event.placements if p.vnode not in event.vnode_ips)
    if missing:
        raise PermanentError(f"no IP allocated for vNode(s) {', '.join(missing)}", reason=Reason.INCOMPLETE_ALLOCATION)
    allocation = Allocation(
        generation=event.generation,
        placements=tuple(event.placements),
        vnode_ips=event.vnode_ips,
        pod_cidr=event.pod_cidr,
        service_cidr=event.service_cidr,
    )
    awaiting = Awaiting(target="ready", since=now, cause=envelope.to_json().decode())
    allocated = record.model_copy(update={"allocation": allocation, "scaled_up": True, "awaiting": awaiting})
    if not placed_vnodes(allocated):
        raise PermanentError("the allocation places none of the spec's nodes", reason=Reason.INCOMPLETE_ALLOCATION)
    return allocated


def retain_volumes(record: ClusterRecord | None, default: bool) -> bool:
    """Whether node-state volumes outlive the cluster: its annotation, else the service default."""
    return _retain_annotation(record.annotations if record is not None else {}, default)


def retain_volumes_on_delete(
    record: ClusterRecord | None, live_annotations: Mapping[str, str] | None, default: bool
) -> bool:
    """Whether a deletion keeps the volumes: by the cluster's record, else by the Vk8s object (it
    outlives the record until cluster.deleted). With neither, the deletion completed before (this
    is a redelivery): whatever volumes are left were retained, so they stay."""
    if record is not None:
        return retain_volumes(record, default)
    if live_annotations is not None:
        return _retain_annotation(live_annotations, default)
    return True


def _retain_annotation(annotations: Mapping[str, str], default: bool) -> bool:
    value = annotations.get(RETAIN_VOLUMES_ANNOTATION)
    return default if value is None else value.strip().lower() == "true"


# ---------------------------------------------------------------------------------------------
# Desired objects


@dataclass(frozen=True)
class PlacedVNode:
    node: NodeSpec
    placement: VNodePlacement
    ip: str


def placed_vnodes(record: ClusterRecord) -> list[PlacedVNode]:
    """The spec's nodes that the allocation placed, in spec order (master first)."""
    if record.allocation is None:
        return []
    placed = []
    for node in record.spec.nodes:
        placement = record.allocation.placement(node.name)
        if placement is not None:
            placed.append(PlacedVNode(node, placement, record.allocation.vnode_ips[node.name]))
    return placed


@dataclass(frozen=True)
class CurrentStatefulSet:
    """A vNode StatefulSet found in the namespace, as far as planning needs it."""

    name: str
    cluster: str | None
    vnode: str | None
    uid: str | None
    volume_claim_templates: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    name: str


@dataclass(frozen=True)
class Plan:
    """Objects to apply (in order) and objects that should no longer exist, in one namespace.
    `placeholders`: the scheduler's placeholder pods to delete before applying, so the vNode pods
    pinned to those hosts find the resources free."""

    namespace: str
    apply: tuple[dict[str, Any], ...]
    delete: tuple[ObjectRef, ...]
    placeholders: tuple[str, ...] = ()


def clashes(record: ClusterRecord, current: Iterable[CurrentStatefulSet]) -> list[str]:
    """StatefulSets that carry one of this cluster's names but belong to another cluster."""
    wanted = {statefulset_name(record.name, placed.node.name): placed.node.name for placed in placed_vnodes(record)}
    return sorted(
        f"{found.name} (cluster {found.cluster!r}, vNode {found.vnode!r})"
        for found in current
        if found.name in wanted and (found.cluster, found.vnode) != (record.name, wanted[found.name])
    )


def plan(record: ClusterRecord, current: Iterable[CurrentStatefulSet], settings: VNodeSettings) -> Plan:
    """Everything the cluster should have now, given the StatefulSets that exist."""
    current_by_name = {found.name: found for found in current}
    if stale := [f for f in current_by_name.values() if f.cluster == record.name and f.uid != record.uid]:
        raise TransientError(
            f"StatefulSet(s) {', '.join(sorted(f.name for f in stale))} of an earlier cluster named "
            f"{record.name!r} are still being deleted",
            reason=Reason.PREVIOUS_CLUSTER_DELETING,
        )
    if found := clashes(record, current_by_name.values()):
        raise PermanentError(
            f"StatefulSet name(s) taken by another cluster in namespace {record.platform_namespace}: "
            f"{', '.join(found)}; "
            "rename the cluster or its nodes",
            reason=Reason.NAME_CLASH,
        )
    if refusals := node_image_refusals(record.spec, settings.image_policy):
        raise PermanentError(
            "; ".join(f"spec.nodes[{index}].image: {refusal}" for index, refusal in refusals.items()),
            reason=Reason.IMAGE_NOT_ALLOWED,
        )
    placed = placed_vnodes(record)
    replicas = 1 if record.scaled_up and not record.paused else 0
    # The policy first: no vNode of the cluster runs without it.
    objects: list[dict[str, Any]] = [network_policy(record, settings)] if settings.network_policy else []
    objects.append(headless_service(record))
    for vnode in placed:
        name = statefulset_name(record.name, vnode.node.name)
        existing = current_by_name.get(name)
        claims = existing.volume_claim_templates if existing is not None else None
        objects.append(statefulset(record, vnode, replicas, settings, volume_claim_templates=claims))
    deletes: list[ObjectRef] = []
    if not settings.network_policy:
        deletes.append(ObjectRef("NetworkPolicy", network_policy_name(record.name)))
    wanted = {statefulset_name(record.name, vnode.node.name) for vnode in placed}
    # vNodes removed from the spec (scale-in); their claims follow the StatefulSet's retention policy.
    deletes += [
        ObjectRef("StatefulSet", found.name)
        for found in current_by_name.values()
        if found.uid == record.uid and found.name not in wanted
    ]
    master = next((vnode for vnode in placed if vnode.node.role is NodeRole.MASTER), None)
    if record.spec.ports and master is not None:
        objects.append(ports_service(record, settings))
    else:
        deletes.append(ObjectRef("Service", ports_service_name(record.name)))
    if record.spec.access_pod_image and master is not None:
        objects += [access_deployment(record, master, replicas, settings), access_service(record, settings)]
    else:
        deletes += [ObjectRef("Deployment", access_name(record.name)), ObjectRef("Service", access_name(record.name))]
    placeholders = tuple(placeholder_name(record.name, vnode.node.name) for vnode in placed) if replicas else ()
    return Plan(
        namespace=record.platform_namespace, apply=tuple(objects), delete=tuple(deletes), placeholders=placeholders
    )


def _metadata(record: ClusterRecord, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """Metadata of a dependent: the Vk8s's labels and annotations, ours winning on conflicts. No
    owner reference: the Vk8s is in another namespace (the garbage collector would delete the
    object); the cluster labels say whose it is, and the gateway deletes the whole namespace."""
    return {
        "name": name,
        "namespace": record.platform_namespace,
        "labels": {**record.labels, **labels},
        "annotations": {k: v for k, v in record.annotations.items() if k not in NOT_PROPAGATED_ANNOTATIONS},
    }


def _cluster_labels(record: ClusterRecord, component: str) -> dict[str, str]:
    return {
        **cluster_labels(record.namespace, record.name, record.uid),
        COMPONENT_LABEL: component,
        ISTIO_INJECT_LABEL: "false",
    }


def vnode_labels(record: ClusterRecord, node: NodeSpec) -> dict[str, str]:
    return {**_cluster_labels(record, VNODE_COMPONENT), ROLE_LABEL: node.role.value, VNODE_LABEL: node.name}


def vnode_resources(node: NodeSpec) -> dict[str, dict[str, str]]:
    """Requests and limits as asked, with `nvidia.com/gpu` requests equal to limits (extended
    resources cannot be overcommitted, and the inner node advertises exactly that many)."""
    requests = {name: str(value) for name, value in node.resources.requests.items()}
    limits = {name: str(value) for name, value in node.resources.limits.items()}
    if GPU_RESOURCE in requests or GPU_RESOURCE in limits:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(node.gpus())
    resources: dict[str, dict[str, str]] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def statefulset(
    record: ClusterRecord,
    vnode: PlacedVNode,
    replicas: int,
    settings: VNodeSettings,
    *,
    volume_claim_templates: tuple[dict[str, Any], ...] | None = None,
) -> dict[str, Any]:
    """One vNode: a privileged pod running its own container runtime and kubelet, its state on a volume.

    `volume_claim_templates` of an existing StatefulSet are kept as they are: they cannot change,
    so a later change of storage settings applies to new vNodes only.
    """
    node = vnode.node
    labels = vnode_labels(record, node)
    selector = {APP_LABEL: APP, CLUSTER_LABEL: record.name, VNODE_LABEL: node.name}
    mounts = [{"name": volume, "mountPath": path, "readOnly": True} for volume, path in settings.host_dirs.items()]
    mounts.append({"name": NODE_STATE_VOLUME, "mountPath": settings.node_state_path})
    mounts += [
        {"name": NODE_STATE_VOLUME, "mountPath": path, "subPath": sub_path}
        for path, sub_path in sorted(settings.node_state_dirs.items())
    ]
    try:
        image = record.spec.image_for(node, settings.image_catalog)
    except ValueError as error:
        raise PermanentError(str(error), reason=Reason.NO_NODE_IMAGE) from None
    container: dict[str, Any] = {
        "name": VNODE_CONTAINER,
        "image": image,
        "securityContext": {"privileged": True},
        "volumeMounts": mounts,
    }
    if resources := vnode_resources(node):
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "nodeName": vnode.placement.host_node,
        # The vNode is a machine of the inner cluster: no credentials or service env of the host's.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [
            {"name": volume, "hostPath": {"path": path, "type": "Directory"}}
            for volume, path in settings.host_dirs.items()
        ],
    }
    if node.tolerations:
        pod_spec["tolerations"] = [
            toleration.model_dump(mode="json", by_alias=True, exclude_none=True) for toleration in node.tolerations
        ]
    claim_templates = volume_claim_templates or (node_state_claim(record, vnode, settings),)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(record, statefulset_name(record.name, node.name), labels),
        "spec": {
            "replicas": replicas,
            "serviceName": headless_service_name(record.name),
            # One pod each: ordering between vNodes is the bootstrap stage's business.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain" if retain_volumes(record, settings.retain_volumes) else "Delete",
                "whenScaled": "Retain",  # a paused vNode keeps its node state
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {settings.ip_annotation: json.dumps([vnode.ip])},
                },
                "spec": pod_spec,
            },
            "volumeClaimTemplates": list(claim_templates),
        },
    }


def node_state_claim(record: ClusterRecord, vnode: PlacedVNode, settings: VNodeSettings) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(settings.state_volume_size)}},
    }
    if settings.storage_class is not None:
        spec["storageClassName"] = settings.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": NODE_STATE_VOLUME,
            "labels": vnode_labels(record, vnode.node),
            "annotations": {SELECTED_NODE_ANNOTATION: vnode.placement.host_node},
        },
        "spec": spec,
    }


def _service(record: ClusterRecord, name: str, component: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(record, name, _cluster_labels(record, component)),
        "spec": spec,
    }


def network_policy(record: ClusterRecord, settings: VNodeSettings) -> dict[str, Any]:
    """Around the cluster's pods (vNodes, access pod): in only from each other and the peers the
    settings name (the kubeflow service, the Kubeflow UI's clients); out to each other and where the
    settings allow (default: anywhere but the cloud metadata address). Nothing else runs in the
    platform namespace, and other clusters' vNodes are in namespaces of their own."""
    cluster = {"podSelector": {"matchLabels": {APP_LABEL: APP, CLUSTER_LABEL: record.name}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(record, network_policy_name(record.name), _cluster_labels(record, VNODE_COMPONENT)),
        "spec": {
            **cluster,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [cluster]}, *settings.network_policy_ingress],
            "egress": [{"to": [cluster]}, *settings.network_policy_egress],
        },
    }


def headless_service(record: ClusterRecord) -> dict[str, Any]:
    """Stable DNS names for the vNode pods, published before they are ready (kubeadm needs them first)."""
    selector = {APP_LABEL: APP, CLUSTER_LABEL: record.name, COMPONENT_LABEL: VNODE_COMPONENT}
    return _service(
        record,
        headless_service_name(record.name),
        VNODE_COMPONENT,
        {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector},
    )


def ports_service(record: ClusterRecord, settings: VNodeSettings) -> dict[str, Any]:
    """spec.ports on a Service in front of the master vNode, of the type the settings say; node
    ports are host-wide, so Kubernetes allocates them (a nodePort in an event is not used)."""
    selector = {
        APP_LABEL: APP,
        CLUSTER_LABEL: record.name,
        COMPONENT_LABEL: VNODE_COMPONENT,
        ROLE_LABEL: NodeRole.MASTER.value,
    }
    # protocol is part of the ports' merge key: server-side apply needs it spelled out.
    ports = [
        {"protocol": "TCP", **port.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"node_port"})}
        for port in record.spec.ports
    ]
    spec = {"type": settings.ports_service_type, "selector": selector, "ports": ports}
    return _service(record, ports_service_name(record.name), VNODE_COMPONENT, spec)


def _access_port(record: ClusterRecord, settings: VNodeSettings) -> int:
    return record.spec.access_pod_port or settings.access_pod_port


def access_deployment(
    record: ClusterRecord, master: PlacedVNode, replicas: int, settings: VNodeSettings
) -> dict[str, Any]:
    """The SSH/kubectl access pod; it needs no GPU, so the host's scheduler places it."""
    labels = _cluster_labels(record, ACCESS_COMPONENT)
    selector = {APP_LABEL: APP, CLUSTER_LABEL: record.name, COMPONENT_LABEL: ACCESS_COMPONENT}
    port = _access_port(record, settings)
    container = {
        "name": ACCESS_COMPONENT,
        "image": record.spec.access_pod_image,
        "ports": [{"name": ACCESS_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "env": [{"name": "VK8S_API_SERVER", "value": f"https://{master.ip}:{INNER_API_SERVER_PORT}"}],
        "resources": {
            kind: {name: str(value) for name, value in values.items()}
            for kind, values in settings.access_pod_resources.items()
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(record, access_name(record.name), labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"automountServiceAccountToken": False, "enableServiceLinks": False, "containers": [container]},
            },
        },
    }


def access_service(record: ClusterRecord, settings: VNodeSettings) -> dict[str, Any]:
    selector = {APP_LABEL: APP, CLUSTER_LABEL: record.name, COMPONENT_LABEL: ACCESS_COMPONENT}
    port = _access_port(record, settings)
    ports = [{"name": ACCESS_PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}]
    return _service(
        record, access_name(record.name), ACCESS_COMPONENT, {"type": "NodePort", "selector": selector, "ports": ports}
    )


# ---------------------------------------------------------------------------------------------
# Rollout: have the vNodes reached what the record waits for?


@dataclass(frozen=True)
class VNodeRollout:
    """What the host cluster shows of one vNode StatefulSet (`namespace`: the platform namespace it is
    in; `tenant_namespace`: the Vk8s's)."""

    namespace: str
    tenant_namespace: str
    name: str
    cluster: str
    vnode: str
    uid: str
    generation: int
    observed_generation: int
    replicas: int
    status_replicas: int
    ready_replicas: int
    updated_replicas: int
    current_revision: str | None
    update_revision: str | None
    node_name: str | None
    ip_annotation: str | None

    @property
    def state(self) -> Literal["running", "starting", "stopping", "stopped"]:
        if self.replicas == 0:
            return "stopped" if self.status_replicas == 0 else "stopping"
        return "running" if self.ready_replicas >= self.replicas else "starting"


@dataclass(frozen=True)
class Reached:
    """The wait is over: publish `event`, following the awaited cause."""

    event: ClusterVNodesReady | ClusterPaused


@dataclass(frozen=True)
class Waiting:
    detail: str


@dataclass(frozen=True)
class TimedOut:
    detail: str


def _is_running(rollout: VNodeRollout, vnode: PlacedVNode) -> bool:
    return (
        rollout.replicas == 1
        and rollout.observed_generation >= rollout.generation
        and rollout.ready_replicas == 1
        and rollout.updated_replicas == 1
        and rollout.current_revision == rollout.update_revision
        # the applied template, not one a stale cache still shows
        and rollout.node_name == vnode.placement.host_node
        and rollout.ip_annotation == json.dumps([vnode.ip])
    )


def _is_stopped(rollout: VNodeRollout) -> bool:
    return rollout.replicas == 0 and rollout.status_replicas == 0 and rollout.observed_generation >= rollout.generation


def evaluate(
    record: ClusterRecord,
    rollouts: Mapping[str, VNodeRollout],
    now: datetime,
    settings: VNodeSettings,
) -> Reached | Waiting | TimedOut:
    """Whether the vNodes (rollouts by vNode name, this cluster's only) reached `record.awaiting`."""
    awaiting = record.awaiting
    assert awaiting is not None, "only a record that waits can be evaluated"
    placed = placed_vnodes(record)
    if awaiting.target == "ready":
        behind = [
            vnode.node.name
            for vnode in placed
            if (rollout := rollouts.get(vnode.node.name)) is None or not _is_running(rollout, vnode)
        ]
        if not behind:
            return Reached(vnodes_ready(record))
        detail = f"vNode(s) not running yet: {', '.join(behind)}"
    else:
        behind = sorted(name for name, rollout in rollouts.items() if not _is_stopped(rollout))
        if not behind:
            return Reached(ClusterPaused(generation=record.generation, asked_at=awaiting.since))
        detail = f"vNode(s) not stopped yet: {', '.join(behind)}"
    if now - awaiting.since > timedelta(seconds=settings.ready_timeout_s):
        return TimedOut(f"{detail} after {settings.ready_timeout_s:.0f}s")
    return Waiting(detail)


def rollout_failed(awaiting: Awaiting, outcome: TimedOut, pod_problems: Sequence[str]) -> ClusterFailed:
    """cluster.failed for a wait that timed out; for vNodes that do not run, with why their pods
    do not (as the host cluster reports it)."""
    cause = awaiting.cause_envelope()
    ready = awaiting.target == "ready"
    message = outcome.detail
    if ready and pod_problems:
        message += f"; {'; '.join(pod_problems)}"
    return ClusterFailed(
        stage=STAGE,
        reason=Reason.VNODES_NOT_RUNNING if ready else Reason.VNODES_NOT_STOPPED,
        message=message,
        failed_event=cause.type,
        generation=getattr(cause.data, "generation", None),
    )


def vnodes_ready(record: ClusterRecord) -> ClusterVNodesReady:
    allocation = record.allocation
    assert allocation is not None, "a cluster is ready only once allocated"
    return ClusterVNodesReady(
        generation=allocation.generation,
        vnodes=[
            VNodeRef(
                vnode=vnode.node.name,
                role=vnode.node.role.value,
                pod=pod_name(record.name, vnode.node.name),
                host_node=vnode.placement.host_node,
                ip=vnode.ip,
                gpus=vnode.placement.gpus,
            )
            for vnode in placed_vnodes(record)
        ],
        pod_cidr=allocation.pod_cidr,
        service_cidr=allocation.service_cidr,
    )

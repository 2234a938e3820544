"""Placement decisions: pure functions and in-memory structures, no I/O; time is passed in.

`Inventory` is what the scheduler knows about the host nodes: allocatable resources, taints and
labels (from the API), the requests of every pod bound to a node (from the API), and the
bookings of the reservation ledger. It keeps every schedulable node indexed by (GPU model, zone,
hard taints, GPU capacity) and, inside that group, by free GPUs (CPU-only nodes: by free whole
cores), so a best-fit search looks at a few buckets instead of every node.

`place()` puts a gang of vNodes on host nodes, all or none:
- GPU vNodes go to the node with the fewest free GPUs that still fits (best fit), so whole
  nodes stay free for large requests;
- CPU-only vNodes prefer nodes without GPUs, then GPU nodes whose GPUs are already taken;
- a requested GPU model is a hard requirement, NoSchedule/NoExecute taints must be tolerated,
  cordoned nodes are never used;
- with spreadZones, each vNode goes to the zone holding the fewest vNodes of the cluster that
  still has room (a preference: it never makes a cluster unschedulable);
- a vNode that ran somewhere before (a paused cluster, a pod that exists) goes back there if it
  still fits, since its node-local disk lives there.
When a vNode does not fit, the reason says what it needs and what the best node offers.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from libs.api.models import GPU_RESOURCE, GROUP, NodeSpec, Vk8sSpec
from libs.api.models import Toleration as TolerationSpec
from libs.events.catalog import (
    AskedNetworks,
    ClusterAccepted,
    ClusterScheduled,
    ClusterUnschedulable,
    ClusterUpdated,
    VNodePlacement,
    VNodeUnschedulable,
)
from libs.events.envelope import Envelope
from libs.kube import vnodes as vnode_names
from libs.kube.objects import owner_reference

HARD_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True, slots=True)
class Resources:
    gpus: int = 0
    cpu_millis: int = 0
    memory_bytes: int = 0
    pods: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.gpus + other.gpus,
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.pods + other.pods,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.gpus - other.gpus,
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.pods - other.pods,
        )

    def beyond(self, other: Resources) -> Resources:
        """What this needs on top of `other`, per resource (never below zero)."""
        return Resources(
            max(0, self.gpus - other.gpus),
            max(0, self.cpu_millis - other.cpu_millis),
            max(0, self.memory_bytes - other.memory_bytes),
            max(0, self.pods - other.pods),
        )

    def covers(self, need: Resources) -> bool:
        return (
            self.gpus >= need.gpus
            and self.cpu_millis >= need.cpu_millis
            and self.memory_bytes >= need.memory_bytes
            and self.pods >= need.pods
        )

    def exceeds_somewhere(self, other: Resources) -> bool:
        """True when any amount is larger than the other's (capacity that grew)."""
        return (
            self.gpus > other.gpus
            or self.cpu_millis > other.cpu_millis
            or self.memory_bytes > other.memory_bytes
            or self.pods > other.pods
        )


NOTHING = Resources()


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str = ""
    effect: str = ""

    @classmethod
    def from_spec(cls, spec: TolerationSpec) -> Toleration:
        return cls(spec.key or "", spec.operator or "Equal", spec.value or "", spec.effect or "")

    def tolerates(self, taint: Taint) -> bool:
        # The Kubernetes rules: an empty effect matches every effect, an empty key with Exists
        # matches every taint, Exists ignores the value.
        if self.effect and self.effect != taint.effect:
            return False
        if not self.key:
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        return self.operator == "Exists" or self.value == taint.value


def tolerated(taints: Iterable[Taint], tolerations: tuple[Toleration, ...]) -> bool:
    return all(any(t.tolerates(taint) for t in tolerations) for taint in taints)


@dataclass(frozen=True, slots=True)
class HostNode:
    name: str
    allocatable: Resources
    gpu_model: str | None = None
    zone: str | None = None
    taints: tuple[Taint, ...] = ()
    cordoned: bool = False


BookingKey = tuple[str, str]
"""(cluster uid, vNode name): a booking, and the vNode pod that realises it."""


@dataclass(frozen=True, slots=True)
class PodUsage:
    """A pod bound to a node, not Succeeded/Failed: its requests are taken from the node.
    `vnode` is set only for the pod the vNode stage made for that vNode of that cluster uid, or
    for the scheduler's placeholder of it (`placeholder`); the adapter checks name and owner, not
    just labels a tenant could copy."""

    node: str
    requests: Resources
    vnode: BookingKey | None = None
    placeholder: bool = False


@dataclass(frozen=True, slots=True)
class Booking:
    """Resources the ledger holds on a node for one vNode of one cluster."""

    uid: str
    cluster_id: str
    vnode: str
    resources: Resources

    @property
    def key(self) -> BookingKey:
        return (self.uid, self.vnode)


class GroupKey(NamedTuple):
    gpu_model: str | None
    zone: str | None
    taints: frozenset[Taint]  # hard effects only: PreferNoSchedule never blocks
    gpu_capacity: int


class _Group:
    """Schedulable nodes sharing a GroupKey, bucketed by free GPUs (by free cores without GPUs)."""

    __slots__ = ("buckets", "key")

    def __init__(self, key: GroupKey):
        self.key = key
        self.buckets: dict[int, dict[str, None]] = {}  # dicts as insertion-ordered sets


def _bucket(key: GroupKey, free: Resources) -> int:
    return free.gpus if key.gpu_capacity else free.cpu_millis // 1000


class Inventory:
    """Host nodes, pod usage and ledger bookings, with free capacity kept indexed per node.

    A booking counts on its node for what its own vNode pod there does not already take: the API
    counts the pod's requests, so the booking adds only the rest (a vNode grown in place from 2 to
    8 GPUs books 6 more while its 2-GPU pod still runs; nothing once the 8-GPU pod runs). Only the
    pod of the same cluster uid and vNode covers a booking, never a pod of an earlier cluster of
    the same name. Bookings stay in the ledger after that, so capacity stays held for the vNode if
    its pod is restarted or rescheduled onto the same node.

    Mutators return True when capacity may have grown (so pending clusters are worth a retry).
    """

    def __init__(self) -> None:
        self._nodes: dict[str, HostNode] = {}
        self._pods: dict[str, PodUsage] = {}
        self._pod_used: dict[str, Resources] = {}  # every pod, placeholders included
        self._placeholder_used: dict[str, Resources] = {}
        # node -> (cluster uid, vNode) -> requests of its pods bound there (`pods` counts them)
        self._vnode_pods: dict[str, dict[BookingKey, Resources]] = {}
        self._vnode_hosts: dict[str, dict[str, str]] = {}  # cluster uid -> vNode -> node of its pod
        self._own_pods: Counter[tuple[str, BookingKey]] = Counter()  # (node, vNode) -> its own pods there
        self._bookings: dict[str, dict[BookingKey, Booking]] = {}
        self._free: dict[str, Resources] = {}
        self._groups: dict[GroupKey, _Group] = {}
        self._indexed: dict[str, tuple[GroupKey, int]] = {}

    # -- what the API says -------------------------------------------------------------------

    def upsert_node(self, node: HostNode) -> bool:
        previous = self._nodes.get(node.name)
        self._nodes[node.name] = node
        grew = self._refresh(node.name)
        # Uncordoned, untainted or relabelled (e.g. a GPU model): a pending cluster may fit now.
        return grew or previous != node

    def remove_node(self, name: str) -> None:
        self._nodes.pop(name, None)
        self._refresh(name)

    def upsert_pod(self, key: str, usage: PodUsage | None) -> bool:
        """Sets (or with None removes) a pod's usage."""
        previous = self._pods.pop(key, None)
        if previous is not None:
            self._pod_used[previous.node] = self._pod_used.get(previous.node, NOTHING) - previous.requests
            if previous.vnode is not None:
                self._unbind(previous)
        if usage is not None:
            self._pods[key] = usage
            self._pod_used[usage.node] = self._pod_used.get(usage.node, NOTHING) + usage.requests
            if usage.vnode is not None:
                bound = self._vnode_pods.setdefault(usage.node, {})
                bound[usage.vnode] = bound.get(usage.vnode, NOTHING) + usage.requests
                if usage.placeholder:
                    self._placeholder_used[usage.node] = (
                        self._placeholder_used.get(usage.node, NOTHING) + usage.requests
                    )
                else:
                    self._own_pods[(usage.node, usage.vnode)] += 1
                    self._vnode_hosts.setdefault(usage.vnode[0], {})[usage.vnode[1]] = usage.node
        grew = False
        for node in {p.node for p in (previous, usage) if p is not None}:
            grew |= self._refresh(node)
        return grew

    def unbooked_placeholders(self) -> dict[str, BookingKey]:
        """Placeholder pods (pod key -> what they hold) with no booking of theirs on their node."""
        return {
            key: pod.vnode
            for key, pod in self._pods.items()
            if pod.placeholder and pod.vnode is not None and pod.vnode not in self._bookings.get(pod.node, {})
        }

    def pod_keys(self) -> set[str]:
        return set(self._pods)

    def has_pod(self, key: str) -> bool:
        return key in self._pods

    def node_names(self) -> set[str]:
        return set(self._nodes)

    def _unbind(self, pod: PodUsage) -> None:
        assert pod.vnode is not None
        bound = self._vnode_pods[pod.node]
        remaining = bound[pod.vnode] - pod.requests
        if remaining.pods > 0:
            bound[pod.vnode] = remaining
        else:
            del bound[pod.vnode]
        if pod.placeholder:
            self._placeholder_used[pod.node] = self._placeholder_used[pod.node] - pod.requests
            return
        self._own_pods[(pod.node, pod.vnode)] -= 1
        if self._own_pods[(pod.node, pod.vnode)] > 0:
            return
        del self._own_pods[(pod.node, pod.vnode)]
        hosts = self._vnode_hosts.get(pod.vnode[0], {})
        if hosts.get(pod.vnode[1]) == pod.node:
            del hosts[pod.vnode[1]]
        if not hosts:
            self._vnode_hosts.pop(pod.vnode[0], None)

    # -- what the ledger says ----------------------------------------------------------------

    def set_bookings(self, node: str, bookings: Mapping[BookingKey, Booking]) -> bool:
        previous = self._bookings.get(node, {})
        if bookings:
            self._bookings[node] = dict(bookings)
        else:
            self._bookings.pop(node, None)
        grew = self._refresh(node)
        return grew or bool(set(previous) - set(bookings))

    def bookings_on(self, node: str) -> dict[BookingKey, Booking]:
        return dict(self._bookings.get(node, {}))

    def booked_nodes(self) -> list[str]:
        return list(self._bookings)

    def admits(self, node: str, bookings: Mapping[BookingKey, Booking], uid: str) -> bool:
        """Whether the node has room for `bookings` (those of `uid` being the ones to add)."""
        if not any(b.uid == uid for b in bookings.values()):
            return True  # taking ours away always fits, even on a node that is gone
        host = self._nodes.get(node)
        if host is None or host.cordoned:
            return False
        free = self._free_with(host, bookings.values())
        if free.covers(NOTHING):
            return True
        # Already over-committed by others: still fine if our bookings add nothing uncovered.
        return self._free_with(host, [b for b in bookings.values() if b.uid != uid]) == free

    # -- reads -------------------------------------------------------------------------------

    def node(self, name: str) -> HostNode | None:
        return self._nodes.get(name)

    def nodes(self) -> Iterable[HostNode]:
        return self._nodes.values()

    def free(self, name: str) -> Resources | None:
        return self._free.get(name)

    def in_use(self, name: str) -> Resources:
        """What pods take on the node, placeholders aside (they hold bookings: `reserved`)."""
        return self._pod_used.get(name, NOTHING) - self._placeholder_used.get(name, NOTHING)

    def reserved(self, name: str) -> Resources:
        """Booked resources not yet covered by a vNode pod on the node."""
        host = self._nodes.get(name)
        if host is None:
            return NOTHING
        return host.allocatable - self.in_use(name) - self._free[name]

    def vnode_hosts(self, uid: str) -> dict[str, str]:
        """vNode -> node its pod is bound to, for the existing vNode pods of the cluster `uid`."""
        return dict(self._vnode_hosts.get(uid, {}))

    def vnode_pods_on(self, node: str, vnode: BookingKey) -> Resources:
        """What the vNode's own pods already take on the node."""
        return self._vnode_pods.get(node, {}).get(vnode, NOTHING)

    # -- index -------------------------------------------------------------------------------

    def _free_with(self, host: HostNode, bookings: Iterable[Booking]) -> Resources:
        free = host.allocatable - self._pod_used.get(host.name, NOTHING)
        for booking in bookings:
            free = free - booking.resources.beyond(self.vnode_pods_on(host.name, booking.key))
        return free

    def _refresh(self, name: str) -> bool:
        host = self._nodes.get(name)
        before = self._free.get(name)
        if host is None:
            self._free.pop(name, None)
            self._index(name, None)
            return False
        free = self._free_with(host, self._bookings.get(name, {}).values())
        self._free[name] = free
        if host.cordoned:
            self._index(name, None)
        else:
            key = GroupKey(
                host.gpu_model if host.allocatable.gpus else None,
                host.zone,
                frozenset(t for t in host.taints if t.effect in HARD_EFFECTS),
                host.allocatable.gpus,
            )
            self._index(name, (key, _bucket(key, free)))
        return before is None or free.exceeds_somewhere(before)

    def _index(self, name: str, place: tuple[GroupKey, int] | None) -> None:
        current = self._indexed.get(name)
        if current == place:
            return
        if current is not None:
            group = self._groups[current[0]]
            bucket = group.buckets[current[1]]
            del bucket[name]
            if not bucket:
                del group.buckets[current[1]]
                if not group.buckets:
                    del self._groups[current[0]]
            del self._indexed[name]
        if place is not None:
            group = self._groups.setdefault(place[0], _Group(place[0]))
            group.buckets.setdefault(place[1], {})[name] = None
            self._indexed[name] = place


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VNodeRequest:
    name: str
    role: Literal["master", "worker"]
    resources: Resources
    gpu_model: str | None = None
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """The vNodes of one cluster to place now, as one gang."""

    cluster_id: str
    uid: str
    vnodes: tuple[VNodeRequest, ...]
    spread_zones: bool = False
    kept_zones: tuple[str | None, ...] = ()  # zones of the cluster's vNodes that keep their place
    preferred: Mapping[str, str] = field(default_factory=dict)  # vNode -> host it ran on
    excluded: frozenset[str] = frozenset()  # nodes kept for the head of the pending queue


def vnode_request(node: NodeSpec, spec: Vk8sSpec) -> VNodeRequest:
    gpus = node.gpus()
    # A GPU model only means something to a vNode that gets GPUs.
    model = (node.gpu_model or (spec.placement.gpu_model if spec.placement else None)) if gpus else None
    return VNodeRequest(
        name=node.name,
        role=node.role.value,
        resources=Resources(gpus, node.cpu_millis(), node.memory_bytes(), 1),
        gpu_model=model,
        tolerations=tuple(Toleration.from_spec(t) for t in node.tolerations),
    )


# -- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    vnode: VNodeRequest
    host: str
    gpu_model: str | None
    zone: str | None


@dataclass(frozen=True, slots=True)
class Placement:
    assignments: tuple[Assignment, ...]  # in request order


# Every VNodeReason.code the placement search (and the head-of-queue protection) gives.
UNSCHEDULABLE_REASONS = (
    "NoSchedulableNodes",
    "NoGpuNodes",
    "GpuModelUnavailable",
    "TaintNotTolerated",
    "GpusExceedNodeSize",
    "InsufficientGpus",
    "InsufficientCpuMemory",
    "BehindHeadOfQueue",  # fits, but on nodes kept for the head of the pending queue
)


@dataclass(frozen=True, slots=True)
class VNodeReason:
    vnode: str
    code: str  # CamelCase category, for metrics
    text: str  # what a person can act on

    def __post_init__(self) -> None:
        if self.code not in UNSCHEDULABLE_REASONS:  # its metric series would not start at 0
            raise ValueError(f"unschedulable reason {self.code!r} is not in UNSCHEDULABLE_REASONS")


@dataclass(frozen=True, slots=True)
class Unschedulable:
    reasons: tuple[VNodeReason, ...]
    vnodes_total: int

    @property
    def message(self) -> str:
        shown = "; ".join(f"{r.vnode}: {r.text}" for r in self.reasons[:3])
        more = f"; and {len(self.reasons) - 3} more" if len(self.reasons) > 3 else ""
        return (
            f"{len(self.reasons)} of {self.vnodes_total} vNodes do not fit now, so none is placed "
            f"(retried when capacity frees up): {shown}{more}"
        )


def place(request: PlacementRequest, inventory: Inventory) -> Placement | Unschedulable:
    search = _Search(inventory, request)
    # Largest first: big vNodes have the fewest places to go, small ones fill the gaps left.
    order = sorted(
        request.vnodes,
        key=lambda v: (-v.resources.gpus, -v.resources.cpu_millis, -v.resources.memory_bytes, v.name),
    )
    hosts: dict[str, str] = {}
    failed: list[VNodeRequest] = []
    for vnode in order:
        host = search.choose(vnode)
        if host is None:
            failed.append(vnode)
        else:
            hosts[vnode.name] = host
    if failed:
        explained: dict[tuple[object, ...], tuple[str, str]] = {}
        reasons = []
        for vnode in sorted(failed, key=lambda v: request.vnodes.index(v)):
            # vNodes of one shape share their reason; explaining is the slow path.
            shape = (vnode.resources, vnode.gpu_model, vnode.tolerations)
            if shape not in explained:
                explained[shape] = search.explain(vnode)
            code, text = explained[shape]
            reasons.append(VNodeReason(vnode.name, code, text))
        return Unschedulable(tuple(reasons), len(request.vnodes))
    assignments = []
    for vnode in request.vnodes:
        node = inventory.node(hosts[vnode.name])
        assert node is not None
        assignments.append(Assignment(vnode, node.name, node.gpu_model if vnode.resources.gpus else None, node.zone))
    return Placement(tuple(assignments))


def _could_hold(key: GroupKey, vnode: VNodeRequest) -> bool:
    """Whether nodes of the group could ever hold the vNode: GPU count, model, taints."""
    return (
        (not vnode.resources.gpus or key.gpu_capacity >= vnode.resources.gpus)
        and (vnode.gpu_model is None or key.gpu_model == vnode.gpu_model)
        and tolerated(key.taints, vnode.tolerations)
    )


def nodes_awaited(request: PlacementRequest, inventory: Inventory) -> frozenset[str]:
    """The nodes a cluster at the head of the pending queue waits on: for each vNode (largest
    first) the eligible node that could hold it once emptied, preferring a node already chosen
    for the cluster, then the most free now (GPUs first for a GPU vNode). Kept from other
    clusters, they fill up for the head as their pods and bookings go away."""
    chosen: dict[str, Resources] = {}
    order = sorted(request.vnodes, key=lambda v: (-v.resources.gpus, -v.resources.cpu_millis, v.name))
    for vnode in order:
        best: str | None = None
        best_free: tuple[bool, int, int, int] | None = None
        for group in inventory._groups.values():
            if not _could_hold(group.key, vnode):
                continue
            for bucket in group.buckets.values():
                for name in bucket:
                    planned = chosen.get(name, NOTHING)
                    host = inventory._nodes[name]
                    if not (host.allocatable - planned).covers(vnode.resources):
                        continue
                    free = inventory._free[name] - planned
                    gpus = free.gpus if vnode.resources.gpus else 0
                    rank = (name in chosen, gpus, free.cpu_millis, free.memory_bytes)
                    if best_free is None or rank > best_free:
                        best, best_free = name, rank
        if best is not None:
            chosen[best] = chosen.get(best, NOTHING) + vnode.resources
    return frozenset(chosen)


def behind_head(decision: Unschedulable, head: str, since: datetime, nodes: frozenset[str]) -> Unschedulable:
    """The reasons of a cluster that would fit but for the nodes kept for the head of the queue."""
    shown = ", ".join(sorted(nodes)[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
    text = (
        f"fits, but waits behind {head} (pending since {since.isoformat(timespec='seconds')}), "
        f"the oldest waiting cluster, which has the nodes it waits on kept for it ({shown})"
    )
    reasons = tuple(VNodeReason(r.vnode, "BehindHeadOfQueue", text) for r in decision.reasons)
    return Unschedulable(reasons, decision.vnodes_total)


class _Search:
    """One gang placement: trial usage of the gang on top of the inventory, never written to it."""

    def __init__(self, inventory: Inventory, request: PlacementRequest):
        self._inv = inventory
        self._request = request
        self._taken: dict[str, Resources] = {}
        self._zones: Counter[str | None] = Counter(request.kept_zones)
        self._eligible: dict[tuple[object, ...], list[_Group]] = {}

    def choose(self, vnode: VNodeRequest) -> str | None:
        groups = self._groups_for(vnode)
        host = self._preferred(vnode, groups)
        if host is None and groups:
            if self._request.spread_zones:
                host = self._spread(vnode, groups)
            else:
                host = self._best_fit(vnode, groups)
        if host is not None:
            added = vnode.resources.beyond(self._inv.vnode_pods_on(host, (self._request.uid, vnode.name)))
            self._taken[host] = self._taken.get(host, NOTHING) + added
            self._zones[self._inv._indexed[host][0].zone] += 1
        return host

    def _groups_for(self, vnode: VNodeRequest) -> list[_Group]:
        signature = (vnode.resources.gpus > 0, vnode.gpu_model, vnode.tolerations)
        groups = self._eligible.get(signature)
        if groups is None:
            groups = [g for g in self._inv._groups.values() if _could_hold(g.key, vnode)]
            self._eligible[signature] = groups
        return groups

    def _effective_free(self, name: str) -> Resources:
        free = self._inv._free[name]
        taken = self._taken.get(name)
        return free - taken if taken is not None else free

    def _preferred(self, vnode: VNodeRequest, groups: list[_Group]) -> str | None:
        name = self._request.preferred.get(vnode.name)
        indexed = self._inv._indexed.get(name) if name is not None else None
        if name is None or indexed is None or name in self._request.excluded or not any(g.key == indexed[0] for g in groups):
            return None
        # Where the vNode's pod runs already, what that pod takes is its own to keep.
        own = self._inv.vnode_pods_on(name, (self._request.uid, vnode.name))
        return name if self._effective_free(name).covers(vnode.resources.beyond(own)) else None

    def _spread(self, vnode: VNodeRequest, groups: list[_Group]) -> str | None:
        by_count: dict[int, list[_Group]] = {}
        for group in groups:
            by_count.setdefault(self._zones[group.key.zone], []).append(group)
        for count in sorted(by_count):
            host = self._best_fit(vnode, by_count[count])
            if host is not None:
                return host
        return None

    @staticmethod
    def _rank(vnode: VNodeRequest, key: GroupKey, bucket: int) -> tuple[int, int] | None:
        """Where a bucket stands in best-fit order (lower first); None when it cannot hold the vNode."""
        need = vnode.resources
        if need.gpus:
            return (0, bucket) if bucket >= need.gpus else None
        # CPU-only: nodes without GPUs first (tightest CPU fit), then GPU nodes with the fewest
        # free GPUs, so CPU work lands where GPUs are used up and whole GPU nodes stay whole.
        if not key.gpu_capacity:
            return (0, bucket) if bucket >= need.cpu_millis // 1000 else None
        return (1, bucket) if bucket >= 0 else None

    def _best_fit(self, vnode: VNodeRequest, groups: list[_Group]) -> str | None:
        need = vnode.resources
        # Nodes this gang already uses rank by what is left on them; on a tie they win, which
        # keeps a cluster's vNodes together.
        best: str | None = None
        best_rank: tuple[int, int] | None = None
        if self._taken:
            keys = {g.key for g in groups}
            for name in self._taken:
                key = self._inv._indexed[name][0]
                if key not in keys:
                    continue
                free = self._effective_free(name)
                rank = self._rank(vnode, key, _bucket(key, free))
                if rank is not None and free.covers(need) and (best_rank is None or rank < best_rank):
                    best, best_rank = name, rank
        free_of = self._inv._free
        taken = self._taken
        excluded = self._request.excluded
        for group in groups:
            # The group's lowest bucket with a node that fits is its best; the best group wins.
            for bucket in sorted(group.buckets):
                rank = self._rank(vnode, group.key, bucket)
                if rank is None:
                    continue
                if best_rank is not None and rank >= best_rank:
                    break
                found = next(
                    (
                        n
                        for n in group.buckets[bucket]
                        if n not in taken and n not in excluded and free_of[n].covers(need)
                    ),
                    None,
                )
                if found is not None:
                    best, best_rank = found, rank
                    break
        return best

    # -- why not -----------------------------------------------------------------------------

    def explain(self, vnode: VNodeRequest) -> tuple[str, str]:
        need = vnode.resources
        wants = _describe_need(vnode)
        groups = list(self._inv._groups.values())
        if not groups:
            cordoned = sum(1 for n in self._inv.nodes() if n.cordoned)
            detail = f" ({cordoned} cordoned)" if cordoned else ""
            return "NoSchedulableNodes", f"needs {wants}; no host node is schedulable{detail}"
        if need.gpus:
            groups = [g for g in groups if g.key.gpu_capacity]
            if not groups:
                return "NoGpuNodes", f"needs {wants}; no schedulable host node has GPUs"
            if vnode.gpu_model is not None:
                models = sorted({g.key.gpu_model or "unlabelled" for g in groups})
                groups = [g for g in groups if g.key.gpu_model == vnode.gpu_model]
                if not groups:
                    return (
                        "GpuModelUnavailable",
                        f"needs {wants}; no schedulable host node has that model (models: {', '.join(models)})",
                    )
        usable = [g for g in groups if tolerated(g.key.taints, vnode.tolerations)]
        if not usable:
            taints = sorted(
                {str(t) for g in groups for t in g.key.taints if not tolerated((t,), vnode.tolerations)}
            )
            where = " with that GPU model" if vnode.gpu_model else " with GPUs" if need.gpus else ""
            return (
                "TaintNotTolerated",
                f"needs {wants}; every schedulable node{where} has a taint the vNode does not tolerate "
                f"({', '.join(taints[:3])}): add a toleration or free other nodes",
            )
        if need.gpus:
            return self._explain_gpus(vnode, wants, usable)
        return self._explain_cpu(vnode, wants, usable)

    def _explain_gpus(self, vnode: VNodeRequest, wants: str, groups: list[_Group]) -> tuple[str, str]:
        need = vnode.resources
        largest = max(g.key.gpu_capacity for g in groups)
        if largest < need.gpus:
            return (
                "GpusExceedNodeSize",
                f"needs {wants}; no host node has that many (the largest has {largest}): "
                "split it into vNodes with fewer GPUs each",
            )
        most, where = self._most_free_gpus(groups, with_gang=True)
        if most < need.gpus:
            if most:
                text = f"needs {wants}; the most free on one node is {most}, on {where}"
            else:
                text = f"needs {wants}; no node has a free GPU"
            alone, _ = self._most_free_gpus(groups, with_gang=False)
            if alone >= need.gpus:
                text += " once the cluster's other vNodes are placed"
            return "InsufficientGpus", text
        # Enough GPUs somewhere, but not with the CPU, memory or pod slots alongside.
        candidates = [
            name
            for g in groups
            for count, bucket in g.buckets.items()
            if count >= need.gpus
            for name in bucket
            if self._effective_free(name).gpus >= need.gpus
        ]
        wants = _describe_need(vnode, with_compute=True)
        short = self._short_of(candidates, need)
        if short is None:
            return "InsufficientCpuMemory", self._no_combination(wants, candidates, need)
        return "InsufficientCpuMemory", f"needs {wants}; nodes with {need.gpus} free GPUs have at most {short} free"

    def _explain_cpu(self, vnode: VNodeRequest, wants: str, groups: list[_Group]) -> tuple[str, str]:
        need = vnode.resources
        candidates = [name for g in groups for bucket in g.buckets.values() for name in bucket]
        short = self._short_of(candidates, need)
        if short is None:
            return "InsufficientCpuMemory", self._no_combination(wants, candidates, need)
        return "InsufficientCpuMemory", f"needs {wants}; the most free on one node is {short}"

    def _most_free_gpus(self, groups: list[_Group], *, with_gang: bool) -> tuple[int, str | None]:
        most, where = -1, None
        for group in groups:
            for count in sorted(group.buckets, reverse=True):
                if count <= most:
                    break
                for name in group.buckets[count]:
                    free = self._effective_free(name).gpus if with_gang else count
                    if free > most:
                        most, where = free, name
                    if free == count:
                        break
        return max(most, 0), where

    def _short_of(self, candidates: list[str], need: Resources) -> str | None:
        """The most CPU and memory free on one candidate, for what falls short: "4 CPU (n1)"."""
        best_cpu = max(candidates, key=lambda n: self._effective_free(n).cpu_millis)
        best_memory = max(candidates, key=lambda n: self._effective_free(n).memory_bytes)
        cpu = self._effective_free(best_cpu).cpu_millis
        memory = self._effective_free(best_memory).memory_bytes
        parts = []
        if cpu < need.cpu_millis:
            parts.append(f"{_cpu(max(cpu, 0))} ({best_cpu})")
        if memory < need.memory_bytes:
            parts.append(f"{_memory(max(memory, 0))} memory ({best_memory})")
        return " and ".join(parts) or None

    def _no_combination(self, wants: str, candidates: list[str], need: Resources) -> str:
        """Each amount is free somewhere, never all on one node; or the pod slots are used up."""
        if max(self._effective_free(n).pods for n in candidates) < need.pods:
            return f"needs {wants}; no node has a free pod slot"
        return f"needs {wants}; no single node has that CPU and memory free together"


def _describe_need(vnode: VNodeRequest, *, with_compute: bool = False) -> str:
    need = vnode.resources
    compute = f"{_cpu(need.cpu_millis)} and {_memory(need.memory_bytes)} memory"
    if not need.gpus:
        return compute
    model = f" of model {vnode.gpu_model}" if vnode.gpu_model else ""
    return f"{need.gpus} {GPU_RESOURCE}{model}" + (f" with {compute}" if with_compute else "")


def _cpu(millis: int) -> str:
    return f"{millis / 1000:g} CPU"


def _memory(size: int) -> str:
    for unit, shift in (("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if size >= 1 << shift:
            return f"{round(size / (1 << shift), 1):g}{unit}"
    return f"{size}B"


# -- the ledger's records ----------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


class ReservationState(StrEnum):
    HELD = "held"  # booked; waits for cluster.vnodes.ready until expires_at
    CONFIRMED = "confirmed"  # the vNode pods run
    PAUSED = "paused"  # nothing booked; placements kept to send vNodes back where their disks are


class ReservedVNode(_Record):
    vnode: str
    role: Literal["master", "worker"]
    host_node: str
    gpus: int = Field(ge=0)
    cpu_millis: int = Field(ge=0)
    memory_bytes: int = Field(ge=0)
    gpu_model: str | None = None
    zone: str | None = None
    required_model: str | None = None  # what the spec asked for, to tell a changed vNode from a kept one
    confirmed: bool = False

    @property
    def resources(self) -> Resources:
        return Resources(self.gpus, self.cpu_millis, self.memory_bytes, 1)

    def still_fits(self, wanted: VNodeRequest) -> bool:
        return self.resources == wanted.resources and self.required_model == wanted.gpu_model


class Reservation(_Record):
    """One cluster's placement in the ledger; its bookings live under the host nodes' keys."""

    cluster_id: str
    uid: str
    generation: int = Field(ge=1)
    state: ReservationState
    placed_at: AwareDatetime
    expires_at: AwareDatetime | None = None
    vnodes: tuple[ReservedVNode, ...] = ()

    def active(self) -> tuple[ReservedVNode, ...]:
        """The vNodes whose resources are booked."""
        return () if self.state is ReservationState.PAUSED else self.vnodes

    def hosts(self) -> set[str]:
        return {v.host_node for v in self.active()}

    def bookings_on(self, node: str) -> dict[BookingKey, Booking]:
        return {
            (self.uid, v.vnode): Booking(self.uid, self.cluster_id, v.vnode, v.resources)
            for v in self.active()
            if v.host_node == node
        }

    def expired(self, now: datetime) -> bool:
        return self.state is ReservationState.HELD and self.expires_at is not None and self.expires_at <= now

    def confirm(self, vnodes: Iterable[str]) -> Reservation:
        ready = set(vnodes)
        updated = tuple(v.model_copy(update={"confirmed": True}) if v.vnode in ready else v for v in self.vnodes)
        if all(v.confirmed for v in updated):
            return self.model_copy(update={"vnodes": updated, "state": ReservationState.CONFIRMED, "expires_at": None})
        return self.model_copy(update={"vnodes": updated})

    def without_unconfirmed(self) -> Reservation | None:
        """What an expired hold leaves: the vNodes the vNode stage confirmed, if any."""
        kept = tuple(v for v in self.vnodes if v.confirmed)
        if not kept:
            return None
        return self.model_copy(update={"vnodes": kept, "state": ReservationState.CONFIRMED, "expires_at": None})

    def placements(self) -> list[VNodePlacement]:
        return [
            VNodePlacement(
                vnode=v.vnode, role=v.role, host_node=v.host_node, gpus=v.gpus, gpu_model=v.gpu_model, zone=v.zone
            )
            for v in self.vnodes
        ]


class PendingCluster(_Record):
    """A cluster that did not fit; retried when capacity grows. `event` is the request's envelope."""

    cluster_id: str
    uid: str
    generation: int = Field(ge=1)
    since: AwareDatetime
    message: str
    subject: str
    event: str


def head_of_queue(pending: Iterable[PendingCluster], now: datetime, after: timedelta) -> PendingCluster | None:
    """The oldest pending cluster once it has waited `after`: from then on the nodes it waits on
    are kept from clusters behind it (else a stream of small clusters starves a big one)."""
    waiting = [p for p in pending if now - p.since >= after]
    return min(waiting, key=lambda p: (p.since, p.cluster_id), default=None)


def plan(
    cluster_id: str, uid: str, spec: Vk8sSpec, previous: Reservation | None, inventory: Inventory
) -> tuple[PlacementRequest, tuple[ReservedVNode, ...]]:
    """What to place for `spec` given the cluster's reservation so far: returns the gang to place
    and the vNodes that keep their place (unchanged, on a node that still exists)."""
    wanted = [vnode_request(node, spec) for node in spec.nodes]
    prior = {v.vnode: v for v in previous.active()} if previous is not None else {}
    kept = tuple(
        prior[w.name]
        for w in wanted
        if w.name in prior and prior[w.name].still_fits(w) and inventory.node(prior[w.name].host_node) is not None
    )
    kept_names = {v.vnode for v in kept}
    # Where each vNode ran: its pod's node, else its earlier placement (a paused cluster's disks).
    preferred = inventory.vnode_hosts(uid)
    if previous is not None:
        preferred = {v.vnode: v.host_node for v in previous.vnodes} | preferred
    request = PlacementRequest(
        cluster_id=cluster_id,
        uid=uid,
        vnodes=tuple(w for w in wanted if w.name not in kept_names),
        spread_zones=bool(spec.placement and spec.placement.spread_zones),
        kept_zones=tuple(v.zone for v in kept),
        preferred=preferred,
    )
    return request, kept


def reservation_for(
    cluster_id: str,
    uid: str,
    generation: int,
    spec: Vk8sSpec,
    kept: tuple[ReservedVNode, ...],
    placement: Placement,
    *,
    now: datetime,
    hold: timedelta,
) -> Reservation:
    placed = {
        a.vnode.name: ReservedVNode(
            vnode=a.vnode.name,
            role=a.vnode.role,
            host_node=a.host,
            gpus=a.vnode.resources.gpus,
            cpu_millis=a.vnode.resources.cpu_millis,
            memory_bytes=a.vnode.resources.memory_bytes,
            gpu_model=a.gpu_model,
            zone=a.zone,
            required_model=a.vnode.gpu_model,
        )
        for a in placement.assignments
    }
    placed |= {v.vnode: v for v in kept}
    vnodes = tuple(placed[node.name] for node in spec.nodes)
    everything_confirmed = all(v.confirmed for v in vnodes)
    return Reservation(
        cluster_id=cluster_id,
        uid=uid,
        generation=generation,
        state=ReservationState.CONFIRMED if everything_confirmed else ReservationState.HELD,
        placed_at=now,
        expires_at=None if everything_confirmed else now + hold,
        vnodes=vnodes,
    )


# -- placeholder pods --------------------------------------------------------------------------

HOLDS_ANNOTATION = f"{GROUP}/holds"


def namespace_and_name(cluster_id: str) -> tuple[str, str]:
    namespace, name = cluster_id.split("/", 1)
    return namespace, name


def placeholders_wanted(reservation: Reservation, inventory: Inventory) -> list[ReservedVNode]:
    """The booked vNodes whose own pod is not on their host yet: a placeholder pod holds their
    resources there, so kube-scheduler puts no other pod in the room kept for them."""
    running = inventory.vnode_hosts(reservation.uid)
    return [v for v in reservation.active() if running.get(v.vnode) != v.host_node]


def placeholder_pod(reservation: Reservation, vnode: ReservedVNode, image: str) -> dict[str, Any]:
    """A pod doing nothing, pinned to the vNode's host with the vNode's requests, owned by the Vk8s
    object. It tolerates every taint: the host was chosen for the vNode. Its finalizer keeps it
    (and its room, to kube-scheduler) after the vnode stage deletes it, until the scheduler sees
    the vNode pod on the host or the booking goes."""
    namespace, name = namespace_and_name(reservation.cluster_id)
    requests = {"cpu": f"{vnode.cpu_millis}m", "memory": str(vnode.memory_bytes)}
    if vnode.gpus:
        requests[GPU_RESOURCE] = str(vnode.gpus)
    owner = owner_reference({"metadata": {"name": name, "uid": reservation.uid}})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": vnode_names.placeholder_name(name, vnode.vnode),
            "namespace": namespace,
            "labels": {
                vnode_names.APP_LABEL: vnode_names.APP,
                vnode_names.CLUSTER_LABEL: name,
                vnode_names.VNODE_LABEL: vnode.vnode,
                vnode_names.CLUSTER_UID_LABEL: reservation.uid,
                vnode_names.COMPONENT_LABEL: vnode_names.PLACEHOLDER_COMPONENT,
            },
            # What it holds, to tell a placeholder left from an earlier placement from the wanted one.
            "annotations": {HOLDS_ANNOTATION: holds(vnode)},
            # Not blocking the owner's deletion: that would need rights on the Vk8s finalizers.
            "ownerReferences": [{**owner, "blockOwnerDeletion": False}],
            "finalizers": [vnode_names.PLACEHOLDER_FINALIZER],
        },
        "spec": {
            "nodeName": vnode.host_node,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "hold", "image": image, "resources": {"requests": requests, "limits": requests}}],
        },
    }


def holds(vnode: ReservedVNode) -> str:
    return f"{vnode.host_node}/{vnode.gpus}/{vnode.cpu_millis}m/{vnode.memory_bytes}"


# -- events ------------------------------------------------------------------------------------


def scheduled_event(
    cause: Envelope[ClusterAccepted] | Envelope[ClusterUpdated], reservation: Reservation, now: datetime
) -> Envelope[ClusterScheduled]:
    # The networks travel on, so the ipmanager needs no earlier event to allocate addresses.
    kubernetes = cause.data.spec.kubernetes
    data = ClusterScheduled(
        generation=reservation.generation,
        placements=reservation.placements(),
        uid=reservation.uid,
        networks=AskedNetworks(pod_network_cidr=kubernetes.pod_network_cidr, service_cidr=kubernetes.service_cidr),
    )
    return cause.follow(data, now=now)


def unschedulable_event(
    cause: Envelope[Any], generation: int, decision: Unschedulable, now: datetime
) -> Envelope[ClusterUnschedulable]:
    data = ClusterUnschedulable(
        generation=generation,
        message=decision.message,
        vnodes=[VNodeUnschedulable(vnode=r.vnode, reason=r.text) for r in decision.reasons],
    )
    # Keyed by the message: a retry that finds a new reason publishes it, the same one is deduplicated.
    return cause.follow(data, now=now, key=hashlib.sha256(decision.message.encode()).hexdigest()[:16])

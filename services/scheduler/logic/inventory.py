"""`Inventory`: what the scheduler knows about the host nodes, indexed for a fast best-fit search.

Allocatable resources, taints and labels (from the API), the requests of every pod bound to a
node (from the API), and the bookings of the reservation ledger. It keeps every schedulable node
indexed by (GPU model, zone, hard taints, GPU capacity) and, inside that group, by free GPUs
(CPU-only nodes: by free whole cores), so a best-fit search looks at a few buckets instead of
every node."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from services.scheduler.logic.resources import HARD_EFFECTS, NOTHING, Resources, Taint


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


class NodeGroup:
    """Schedulable nodes sharing a GroupKey, bucketed by free GPUs (by free cores without GPUs)."""

    __slots__ = ("buckets", "key")

    def __init__(self, key: GroupKey):
        self.key = key
        self.buckets: dict[int, dict[str, None]] = {}  # dicts as insertion-ordered sets


def free_bucket(key: GroupKey, free: Resources) -> int:
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
        self._groups: dict[GroupKey, NodeGroup] = {}
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
            self._index(name, (key, free_bucket(key, free)))
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
            group = self._groups.setdefault(place[0], NodeGroup(place[0]))
            group.buckets.setdefault(place[1], {})[name] = None
            self._indexed[name] = place

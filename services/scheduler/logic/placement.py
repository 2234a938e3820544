"""`place()` puts a gang of vNodes on host nodes, all or none:
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

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from libs.api.models import GPU_RESOURCE, NodeSpec, Vk8sSpec
from libs.events.reasons import Reason
from services.scheduler.logic.inventory import GroupKey, Inventory, NodeGroup, free_bucket
from services.scheduler.logic.resources import NOTHING, Resources, Toleration, tolerated

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
    Reason.NO_SCHEDULABLE_NODES,
    Reason.NO_GPU_NODES,
    Reason.GPU_MODEL_UNAVAILABLE,
    Reason.TAINT_NOT_TOLERATED,
    Reason.GPUS_EXCEED_NODE_SIZE,
    Reason.INSUFFICIENT_GPUS,
    Reason.INSUFFICIENT_CPU_MEMORY,
    Reason.BEHIND_HEAD_OF_QUEUE,  # fits, but on nodes kept for the head of the pending queue
)


@dataclass(frozen=True, slots=True)
class VNodeReason:
    vnode: str
    code: Reason  # the category, for metrics
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
        explained: dict[tuple[object, ...], tuple[Reason, str]] = {}
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
    reasons = tuple(VNodeReason(r.vnode, Reason.BEHIND_HEAD_OF_QUEUE, text) for r in decision.reasons)
    return Unschedulable(reasons, decision.vnodes_total)


class _Search:
    """One gang placement: trial usage of the gang on top of the inventory, never written to it."""

    def __init__(self, inventory: Inventory, request: PlacementRequest):
        self._inv = inventory
        self._request = request
        self._taken: dict[str, Resources] = {}
        self._zones: Counter[str | None] = Counter(request.kept_zones)
        self._eligible: dict[tuple[object, ...], list[NodeGroup]] = {}

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

    def _groups_for(self, vnode: VNodeRequest) -> list[NodeGroup]:
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

    def _preferred(self, vnode: VNodeRequest, groups: list[NodeGroup]) -> str | None:
        name = self._request.preferred.get(vnode.name)
        indexed = self._inv._indexed.get(name) if name is not None else None
        if name is None or indexed is None or name in self._request.excluded or not any(g.key == indexed[0] for g in groups):
            return None
        # Where the vNode's pod runs already, what that pod takes is its own to keep.
        own = self._inv.vnode_pods_on(name, (self._request.uid, vnode.name))
        return name if self._effective_free(name).covers(vnode.resources.beyond(own)) else None

    def _spread(self, vnode: VNodeRequest, groups: list[NodeGroup]) -> str | None:
        by_count: dict[int, list[NodeGroup]] = {}
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

    def _best_fit(self, vnode: VNodeRequest, groups: list[NodeGroup]) -> str | None:
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
                rank = self._rank(vnode, key, free_bucket(key, free))
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

    def explain(self, vnode: VNodeRequest) -> tuple[Reason, str]:
        need = vnode.resources
        wants = _describe_need(vnode)
        groups = list(self._inv._groups.values())
        if not groups:
            cordoned = sum(1 for n in self._inv.nodes() if n.cordoned)
            detail = f" ({cordoned} cordoned)" if cordoned else ""
            return Reason.NO_SCHEDULABLE_NODES, f"needs {wants}; no host node is schedulable{detail}"
        if need.gpus:
            groups = [g for g in groups if g.key.gpu_capacity]
            if not groups:
                return Reason.NO_GPU_NODES, f"needs {wants}; no schedulable host node has GPUs"
            if vnode.gpu_model is not None:
                models = sorted({g.key.gpu_model or "unlabelled" for g in groups})
                groups = [g for g in groups if g.key.gpu_model == vnode.gpu_model]
                if not groups:
                    return (
                        Reason.GPU_MODEL_UNAVAILABLE,
                        f"needs {wants}; no schedulable host node has that model (models: {', '.join(models)})",
                    )
        usable = [g for g in groups if tolerated(g.key.taints, vnode.tolerations)]
        if not usable:
            taints = sorted(
                {str(t) for g in groups for t in g.key.taints if not tolerated((t,), vnode.tolerations)}
            )
            where = " with that GPU model" if vnode.gpu_model else " with GPUs" if need.gpus else ""
            return (
                Reason.TAINT_NOT_TOLERATED,
                f"needs {wants}; every schedulable node{where} has a taint the vNode does not tolerate "
                f"({', '.join(taints[:3])}): add a toleration or free other nodes",
            )
        if need.gpus:
            return self._explain_gpus(vnode, wants, usable)
        return self._explain_cpu(vnode, wants, usable)

    def _explain_gpus(self, vnode: VNodeRequest, wants: str, groups: list[NodeGroup]) -> tuple[Reason, str]:
        need = vnode.resources
        largest = max(g.key.gpu_capacity for g in groups)
        if largest < need.gpus:
            return (
                Reason.GPUS_EXCEED_NODE_SIZE,
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
            return Reason.INSUFFICIENT_GPUS, text
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
            return Reason.INSUFFICIENT_CPU_MEMORY, self._no_combination(wants, candidates, need)
        return Reason.INSUFFICIENT_CPU_MEMORY, f"needs {wants}; nodes with {need.gpus} free GPUs have at most {short} free"

    def _explain_cpu(self, vnode: VNodeRequest, wants: str, groups: list[NodeGroup]) -> tuple[Reason, str]:
        need = vnode.resources
        candidates = [name for g in groups for bucket in g.buckets.values() for name in bucket]
        short = self._short_of(candidates, need)
        if short is None:
            return Reason.INSUFFICIENT_CPU_MEMORY, self._no_combination(wants, candidates, need)
        return Reason.INSUFFICIENT_CPU_MEMORY, f"needs {wants}; the most free on one node is {short}"

    def _most_free_gpus(self, groups: list[NodeGroup], *, with_gang: bool) -> tuple[int, str | None]:
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

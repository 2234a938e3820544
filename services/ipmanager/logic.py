"""Pure decisions of the ipmanager: which networks a cluster gets, which address a vNode gets,
what the reconcile repairs or reports. No I/O; time is passed in."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from libs.api.models import DEFAULT_POD_NETWORK_CIDR, DEFAULT_SERVICE_CIDR
from services.ipmanager.records import ClusterRecord, IpClaim, NetworkClaim, NetworkTable

IPNetwork = IPv4Network | IPv6Network

POD_CIDR_FIELD = "spec.kubernetes.podNetworkCidr"
SERVICE_CIDR_FIELD = "spec.kubernetes.serviceCidr"
API_DEFAULT_POD_CIDR = ip_network(DEFAULT_POD_NETWORK_CIDR)
API_DEFAULT_SERVICE_CIDR = ip_network(DEFAULT_SERVICE_CIDR)

# A uid becomes part of KV keys; Kubernetes uids are UUIDs, well inside this.
_UID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class NetworkConflict(Exception):
    """Given CIDRs overlap the host's ranges, another cluster's networks, or each other."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


class NetworkImmutable(Exception):
    """A later spec asks for other CIDRs than the ones claimed; the inner cluster cannot move."""


class ClusterReleased(Exception):
    """The cluster's delete chain already released its networks: a late claim must not hold them again."""


class PoolExhausted(Exception):
    """No free CIDR block or address is left in a pool."""


def valid_uid(uid: str) -> bool:
    return bool(_UID.match(uid))


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _stable_hash(text: str) -> int:
    # Not hash(): that is salted per process, and replicas must agree on the probe order.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class NetworkRequest:
    """The CIDRs a spec gives; None means "allocate one"."""

    pod_cidr: IPNetwork | None = None
    service_cidr: IPNetwork | None = None

    @classmethod
    def from_spec(cls, pod_network_cidr: str, service_cidr: str) -> NetworkRequest:
        """The API fills in the original's defaults when a spec gives no CIDRs and cannot tell them
        from explicit ones after a round trip through the apiserver; they mean "allocate", else
        every cluster left at its defaults would claim the same ranges."""
        pod, service = ip_network(pod_network_cidr), ip_network(service_cidr)
        return cls(
            pod_cidr=None if pod == API_DEFAULT_POD_CIDR else pod,
            service_cidr=None if service == API_DEFAULT_SERVICE_CIDR else service,
        )


@dataclass(frozen=True)
class Reserved:
    """A host range no cluster network may overlap, e.g. ("the host pod CIDR", 10.244.0.0/16)."""

    what: str
    network: IPNetwork


@dataclass(frozen=True)
class CidrPool:
    """Where CIDRs of one prefix length are carved from, lowest free block first."""

    name: str
    network: IPv4Network
    prefix: int

    @property
    def size(self) -> int:
        return 1 << (self.prefix - self.network.prefixlen)

    @property
    def _step(self) -> int:
        return 1 << (32 - self.prefix)

    def first_free(self, taken: Iterable[IPNetwork]) -> IPv4Network:
        start, step = int(self.network.network_address), self._step
        candidate = start
        for low, high in _merged_spans(taken):
            if high < candidate:
                continue
            if low >= candidate + step:
                break
            # Jump to the first block past the whole blocking span.
            candidate = start + -(-(high + 1 - start) // step) * step
        if candidate + step - 1 <= int(self.network.broadcast_address):
            return IPv4Network((candidate, self.prefix))
        raise PoolExhausted(f"the {self.name} pool {self.network} has no free /{self.prefix} left")

    def blocks_touched(self, networks: Iterable[IPNetwork]) -> int:
        """How many of the pool's blocks overlap any of `networks`."""
        start, step = int(self.network.network_address), self._step
        end = int(self.network.broadcast_address)
        count, reach = 0, -1
        for low, high in _merged_spans(networks):
            if high < start or low > end:
                continue
            first, last = (max(low, start) - start) // step, (min(high, end) - start) // step
            first = max(first, reach + 1)
            if last >= first:
                count += last - first + 1
                reach = last
        return count


def _merged_spans(networks: Iterable[IPNetwork]) -> list[tuple[int, int]]:
    """The IPv4 networks as sorted, merged [first, last] address ranges (pools are IPv4 only)."""
    spans: list[tuple[int, int]] = []
    for low, high in sorted(
        (int(n.network_address), int(n.network_address) + (1 << (32 - n.prefixlen)) - 1)
        for n in networks
        if n.version == 4
    ):
        if spans and low <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(spans[-1][1], high))
        else:
            spans.append((low, high))
    return spans


@dataclass(frozen=True)
class NetworkLayout:
    reserved: tuple[Reserved, ...]
    pod_pool: CidrPool
    service_pool: CidrPool


def claim_network(
    table: NetworkTable,
    *,
    uid: str,
    cluster_id: str,
    generation: int,
    request: NetworkRequest,
    layout: NetworkLayout,
    now: datetime,
) -> NetworkClaim:
    """The cluster's network claim: its existing one when the request still fits it (or is older
    than it), else a new one; raises NetworkConflict naming every overlap of a given CIDR, and
    ClusterReleased for a cluster whose deletion released its networks already."""
    if uid in table.released:
        raise ClusterReleased(f"cluster {cluster_id} (uid {uid}) was deleted and its networks released")
    existing = table.clusters.get(uid)
    if existing is not None:
        if generation < existing.generation:
            return existing  # a redelivered older spec: the claim already reflects a newer one
        changes = [
            f"{field} cannot change from {claimed} to {asked}"
            for field, asked, claimed in (
                (POD_CIDR_FIELD, request.pod_cidr, existing.pod_cidr),
                (SERVICE_CIDR_FIELD, request.service_cidr, existing.service_cidr),
            )
            if asked is not None and asked != claimed
        ]
        if changes:
            raise NetworkImmutable("; ".join(changes) + " (a virtual cluster's networks are fixed once claimed)")
        return existing

    taken = [(r.network, r.what) for r in layout.reserved]
    for other in table.clusters.values():
        taken.append((other.pod_cidr, f"the pod network of cluster {other.cluster_id}"))
        taken.append((other.service_cidr, f"the service network of cluster {other.cluster_id}"))
    problems = [
        f"{field} {given} overlaps {what} ({network})"
        for field, given in ((POD_CIDR_FIELD, request.pod_cidr), (SERVICE_CIDR_FIELD, request.service_cidr))
        if given is not None
        for network, what in taken
        if overlaps(given, network)
    ]
    if request.pod_cidr and request.service_cidr and overlaps(request.pod_cidr, request.service_cidr):
        problems.append(f"{SERVICE_CIDR_FIELD} {request.service_cidr} overlaps {POD_CIDR_FIELD} {request.pod_cidr}")
    if problems:
        raise NetworkConflict(problems)

    occupied = [network for network, _ in taken]
    pod = request.pod_cidr or layout.pod_pool.first_free([*occupied, *([request.service_cidr] if request.service_cidr else [])])
    service = request.service_cidr or layout.service_pool.first_free([*occupied, pod])
    return NetworkClaim(
        uid=uid,
        cluster_id=cluster_id,
        generation=generation,
        pod_cidr=pod,
        service_cidr=service,
        pod_cidr_given=request.pod_cidr is not None,
        service_cidr_given=request.service_cidr is not None,
        claimed_at=now,
    )


@dataclass(frozen=True)
class AddressPool:
    """The vNode addresses: every address of the network but its network and broadcast address."""

    network: IPv4Network

    @property
    def _first(self) -> int:
        return int(self.network.network_address) + (1 if self.network.prefixlen < 31 else 0)

    @property
    def size(self) -> int:
        return self.network.num_addresses - (2 if self.network.prefixlen < 31 else 0)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self._first <= int(address) < self._first + self.size

    def pick(self, seed: str, taken: Collection[IPv4Address]) -> IPv4Address:
        """A free address, probing from a point that depends on `seed`: concurrent allocators (and
        replicas) start at different places instead of all racing for the lowest address."""
        start = _stable_hash(seed) % self.size
        for offset in range(self.size):
            address = IPv4Address(self._first + (start + offset) % self.size)
            if address not in taken:
                return address
        raise PoolExhausted(f"the vNode IP pool {self.network} has no free address")


def plan_vnode_addresses(
    *,
    uid: str,
    planned: Mapping[str, IPv4Address],
    vnodes: Sequence[str],
    claims: Mapping[IPv4Address, IpClaim],
    pool: AddressPool,
) -> dict[str, IPv4Address]:
    """The cluster index after this round: every vNode keeps an address it already claimed, or its
    intent unless known taken, else gets a new one. vNodes not placed now keep theirs. `claims`
    holds what is known (a partial view is fine: a create settles whether an address is free)."""
    result = dict(planned)
    taken = set(claims) | set(planned.values())
    for vnode in vnodes:
        owned = sorted(address for address, claim in claims.items() if claim.owned_by(uid, vnode))
        intent = result.get(vnode)
        if owned:
            # A claim made before its index entry was written (a crash in between) wins over an intent.
            result[vnode] = intent if intent in owned else owned[0]
        elif intent is None or intent in claims or intent not in pool:
            result[vnode] = pool.pick(f"{uid}/{vnode}", taken)
            taken.add(result[vnode])
    return result


class View(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, alias_generator=to_camel)


OrphanReason = Literal["ClusterGone", "Superseded"]


class Orphan(View):
    """A claimed address no cluster uses: its cluster is gone (or the cluster's index names another
    address for that vNode) and no vNode pod has it."""

    address: IPv4Address
    uid: str
    cluster_id: str
    vnode: str
    reason: OrphanReason
    claimed_at: AwareDatetime
    age_s: float
    due: bool
    """Older than the grace period, or of a cluster whose deletion released it: the reconcile releases it."""


@dataclass(frozen=True)
class Repair:
    """An index entry to rewrite from the ip.* claims: cluster `uid`'s vNode -> `address`."""

    uid: str
    cluster_id: str
    vnode: str
    address: IPv4Address


@dataclass(frozen=True)
class ReconcilePlan:
    repairs: tuple[Repair, ...]
    orphans: tuple[Orphan, ...]


def plan_reconcile(
    *,
    claims: Mapping[IPv4Address, IpClaim],
    table: NetworkTable,
    records: Mapping[str, ClusterRecord],
    pod_addresses: Collection[IPv4Address] | None,
    now: datetime,
    grace_s: float,
) -> ReconcilePlan:
    """Index repairs and orphans from one consistent look at the claims. With no pod information
    (`pod_addresses` None) nothing is judged orphaned: a live pod could hold any address."""
    by_owner: dict[tuple[str, str], list[IPv4Address]] = {}
    for address, claim in claims.items():
        by_owner.setdefault((claim.uid, claim.vnode), []).append(address)
    repairs: list[Repair] = []
    orphans: list[Orphan] = []
    for (uid, vnode), addresses in sorted(by_owner.items()):
        addresses.sort()
        # A tombstoned cluster is being released (or was): its index is deleted, never repaired.
        network = None if uid in table.released else table.clusters.get(uid)
        if network is None:
            abandoned: list[tuple[IPv4Address, OrphanReason]] = [(a, "ClusterGone") for a in addresses]
        else:
            record = records.get(uid)
            indexed = record.vnodes.get(vnode) if record is not None else None
            keeper = indexed if indexed in addresses else addresses[0]
            if keeper != indexed:
                repairs.append(Repair(uid, network.cluster_id, vnode, keeper))
            abandoned = [(a, "Superseded") for a in addresses if a != keeper]
        for address, reason in abandoned:
            if pod_addresses is None or address in pod_addresses:
                continue
            claim = claims[address]
            age = claim.age_s(now)
            orphans.append(
                Orphan(
                    address=address,
                    uid=uid,
                    cluster_id=claim.cluster_id,
                    vnode=vnode,
                    reason=reason,
                    claimed_at=claim.claimed_at,
                    age_s=round(age, 3),
                    # A released cluster's pods are gone (its vNodes were deleted first).
                    due=age >= grace_s or uid in table.released,
                )
            )
    return ReconcilePlan(tuple(repairs), tuple(orphans))


class AddressView(View):
    vnode: str
    address: IPv4Address
    claimed_at: AwareDatetime


class ClusterAllocation(View):
    """What one cluster holds: its networks and the addresses claimed for its vNodes."""

    uid: str
    cluster_id: str
    generation: int
    pod_cidr: str
    service_cidr: str
    pod_cidr_given: bool
    service_cidr_given: bool
    claimed_at: AwareDatetime
    addresses: tuple[AddressView, ...]


def cluster_allocations(table: NetworkTable, claims: Mapping[IPv4Address, IpClaim]) -> list[ClusterAllocation]:
    by_uid: dict[str, list[AddressView]] = {}
    for address, claim in sorted(claims.items()):
        by_uid.setdefault(claim.uid, []).append(
            AddressView(vnode=claim.vnode, address=address, claimed_at=claim.claimed_at)
        )
    return [
        ClusterAllocation(
            uid=network.uid,
            cluster_id=network.cluster_id,
            generation=network.generation,
            pod_cidr=str(network.pod_cidr),
            service_cidr=str(network.service_cidr),
            pod_cidr_given=network.pod_cidr_given,
            service_cidr_given=network.service_cidr_given,
            claimed_at=network.claimed_at,
            addresses=tuple(sorted(by_uid.get(network.uid, []), key=lambda view: view.vnode)),
        )
        for network in sorted(table.clusters.values(), key=lambda n: (n.cluster_id, n.claimed_at))
    ]


class PoolUsage(View):
    """`total` = `allocated` + `reserved` (overlapping a host range) + `free`."""

    name: str
    network: str
    unit: Literal["address", "cidr"]
    prefix_length: int | None = None
    total: int
    allocated: int
    reserved: int
    free: int


def vnode_pool_usage(pool: AddressPool, claims: Collection[IPv4Address]) -> PoolUsage:
    allocated = sum(1 for address in claims if address in pool)
    return PoolUsage(
        name="vnode-ips",
        network=str(pool.network),
        unit="address",
        total=pool.size,
        allocated=allocated,
        reserved=0,
        free=pool.size - allocated,
    )


def cidr_pool_usage(pool: CidrPool, table: NetworkTable, reserved: Iterable[Reserved]) -> PoolUsage:
    claimed = [n for claim in table.clusters.values() for n in (claim.pod_cidr, claim.service_cidr)]
    allocated = pool.blocks_touched(claimed)
    unavailable = pool.blocks_touched([*claimed, *(r.network for r in reserved)])
    return PoolUsage(
        name=pool.name,
        network=str(pool.network),
        unit="cidr",
        prefix_length=pool.prefix,
        total=pool.size,
        allocated=allocated,
        reserved=unavailable - allocated,
        free=pool.size - unavailable,
    )


def pool_usages(
    pool: AddressPool, layout: NetworkLayout, claimed: Collection[IPv4Address], table: NetworkTable
) -> list[PoolUsage]:
    return [
        vnode_pool_usage(pool, claimed),
        cidr_pool_usage(layout.pod_pool, table, layout.reserved),
        cidr_pool_usage(layout.service_pool, table, layout.reserved),
    ]

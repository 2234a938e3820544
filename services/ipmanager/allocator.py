"""The ipmanager's use cases: read the KV state, decide (logic.py), compare-and-set, retry on a lost race.

Crash safety of a vNode allocation: the cluster index (cluster.<uid>) names the address before
ip.<address> is created, and the create is the one write that claims it. A crash after the
index write leaves an intent the next attempt completes (or replaces, if another cluster took the
address meanwhile); a crash after the create leaves a claim the index already names. A claim the
index does not name (state from elsewhere) is adopted by the next attempt when it lies on the
vNode's probe path (where this code would have put it), and repaired by the reconcile in any case.
Nothing is given twice: ip.<address> is created at most once until it is deleted.

Addresses are found by probing (try to create; a vNode starts at a point hashed from its uid and
name), not by reading every claim first: a scan of a crowded pool costs far more than a few probes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from ipaddress import IPv4Address

import structlog

from libs.events import utc_now
from services.ipmanager import logic
from services.ipmanager.adapters.kv import KvStore, RevisionConflict
from services.ipmanager.adapters.metrics import IpManagerMetrics
from services.ipmanager.logic import (
    AddressPool,
    ClusterAllocation,
    NetworkConflict,
    NetworkImmutable,
    NetworkLayout,
    NetworkRequest,
    PoolUsage,
)
from services.ipmanager.records import ClusterRecord, IpClaim, NetworkClaim, NetworkTable

log = structlog.get_logger(__name__)

# Compare-and-set rounds before giving up for now; each lost round means another writer progressed.
MAX_ATTEMPTS = 100
# Addresses found taken by probing, after which one scan of all claims is cheaper than more probes.
PROBES_BEFORE_SCAN = 8


class Contention(Exception):
    """Lost the compare-and-set race MAX_ATTEMPTS times in a row."""


class StaleAllocation(Exception):
    """A cluster.scheduled older than one already handled for the cluster: the newer answer stands."""


class NetworkNotClaimed(Exception):
    """No network is claimed for the cluster: its cluster.accepted is not handled yet, or was refused."""


class Allocator:
    def __init__(
        self,
        store: KvStore,
        *,
        layout: NetworkLayout,
        pool: AddressPool,
        metrics: IpManagerMetrics,
        tombstone_retention: timedelta,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._store = store
        self._layout = layout
        self._pool = pool
        self._metrics = metrics
        self._tombstone_retention = tombstone_retention
        self._clock = clock
        # Every cluster's network claim rewrites the one networks key: taking turns inside this
        # process leaves compare-and-set conflicts only between replicas.
        self._networks_turn = asyncio.Lock()

    async def claim_network(
        self, *, uid: str, cluster_id: str, generation: int, request: NetworkRequest
    ) -> NetworkClaim:
        """Claims the cluster's pod and service CIDRs, or returns its existing claim."""
        async with self._networks_turn:
            return await self._claim_network(uid, cluster_id, generation, request)

    async def _claim_network(
        self, uid: str, cluster_id: str, generation: int, request: NetworkRequest
    ) -> NetworkClaim:
        for _ in range(MAX_ATTEMPTS):
            current = await self._store.network_table()
            table = current.value if current is not None else NetworkTable()
            try:
                claim = logic.claim_network(
                    table,
                    uid=uid,
                    cluster_id=cluster_id,
                    generation=generation,
                    request=request,
                    layout=self._layout,
                    now=self._clock(),
                )
            except logic.ClusterReleased:
                self._metrics.network_rejections.labels("ClusterReleased").inc()
                raise
            except (NetworkConflict, NetworkImmutable) as error:
                self._metrics.network_rejections.labels(
                    "NetworkOverlap" if isinstance(error, NetworkConflict) else "NetworkImmutable"
                ).inc()
                raise
            if table.clusters.get(uid) == claim:
                return claim
            try:
                await self._store.put_network_table(
                    table.with_claim(claim), current.revision if current is not None else None
                )
            except RevisionConflict:
                self._metrics.claim_conflicts.labels("networks").inc()
                continue
            self._metrics.allocations.labels("pod-cidr").inc()
            self._metrics.allocations.labels("service-cidr").inc()
            log.info(
                "Claimed networks",
                uid=uid,
                pod_cidr=str(claim.pod_cidr),
                service_cidr=str(claim.service_cidr),
                pod_cidr_given=claim.pod_cidr_given,
                service_cidr_given=claim.service_cidr_given,
            )
            return claim
        raise Contention(f"the network table kept changing while claiming networks for {cluster_id}")

    async def allocate_vnode_ips(
        self, cluster_id: str, generation: int, vnodes: Sequence[str], *, uid: str | None = None
    ) -> tuple[NetworkClaim, dict[str, IPv4Address]]:
        """The cluster's network and an address per vNode: the one it already has, else a new one.
        vNodes of the cluster not among `vnodes` (scaled in) lose their addresses at once. `uid`
        names the cluster object (events of earlier versions lack it: the name's newest claim)."""
        table = await self._store.networks()
        if uid is not None and uid in table.released:
            raise logic.ClusterReleased(f"cluster {cluster_id} (uid {uid}) was deleted and its networks released")
        network = table.clusters.get(uid) if uid is not None else table.newest_for(cluster_id)
        if network is None:
            raise NetworkNotClaimed(
                f"no network is claimed for {cluster_id}: its cluster.accepted is not handled yet, or was refused"
            )
        uid = network.uid
        # Owners of addresses this call found taken: probing learns them one by one, and a full
        # scan replaces them once probing gets expensive (a crowded pool).
        known: dict[IPv4Address, IpClaim] = {}
        scanned = False
        for _ in range(MAX_ATTEMPTS):
            current = await self._store.cluster_record(uid)
            record = current.value if current else ClusterRecord(uid=uid, cluster_id=cluster_id)
            if generation < record.generation:
                raise StaleAllocation(
                    f"generation {generation} of {cluster_id} is older than the allocated {record.generation}"
                )
            planned = logic.plan_vnode_addresses(
                uid=uid, planned=record.vnodes, vnodes=vnodes, claims=known, pool=self._pool
            )
            if current is None or planned != record.vnodes:
                try:
                    await self._store.put_cluster_record(
                        record.model_copy(update={"vnodes": planned}), current.revision if current else None
                    )
                except RevisionConflict:
                    self._metrics.claim_conflicts.labels("cluster").inc()
                    continue
            now = self._clock()
            standing = await asyncio.gather(
                *(
                    self._claim(planned[vnode], IpClaim(uid=uid, cluster_id=cluster_id, vnode=vnode, claimed_at=now))
                    for vnode in vnodes
                )
            )
            lost = {
                planned[vnode]: claim
                for vnode, claim in zip(vnodes, standing, strict=True)
                if claim is None or not claim.owned_by(uid, vnode)
            }
            if not lost:
                if uid in (await self._store.networks()).released:
                    # Deleted while this ran: its release may have listed the claims before these.
                    await self._release_addresses(uid)
                    raise logic.ClusterReleased(f"cluster {cluster_id} (uid {uid}) was deleted meanwhile")
                await self._release_removed(uid, generation, vnodes)
                return network, {vnode: planned[vnode] for vnode in vnodes}
            known.update({address: claim for address, claim in lost.items() if claim is not None})
            if not scanned and len(known) >= PROBES_BEFORE_SCAN:
                known = {address: claim.value for address, claim in (await self._store.ip_claims()).items()}
                scanned = True
        raise Contention(f"addresses kept being taken while allocating for {cluster_id}")

    async def _release_removed(self, uid: str, generation: int, vnodes: Sequence[str]) -> None:
        """Frees the addresses of vNodes the cluster no longer has, then records the generation.
        Claims go before their index entries: a crash in between leaves entries the next
        cluster.scheduled removes, never a claim the reconcile would put back in the index."""
        for _ in range(MAX_ATTEMPTS):
            current = await self._store.cluster_record(uid)
            if current is None or current.value.generation > generation:
                return
            record = current.value
            removed = {vnode: address for vnode, address in record.vnodes.items() if vnode not in vnodes}
            if not removed and record.generation == generation:
                return
            released = []
            for vnode, address in sorted(removed.items()):
                claim = await self._store.ip_claim(address)
                if (
                    claim is not None
                    and claim.value.owned_by(uid, vnode)
                    and await self._store.delete_ip_claim(address, claim.revision)
                ):
                    released.append(address)
            kept = {vnode: address for vnode, address in record.vnodes.items() if vnode not in removed}
            try:
                await self._store.put_cluster_record(
                    record.model_copy(update={"vnodes": kept, "generation": generation}), current.revision
                )
            except RevisionConflict:
                self._metrics.claim_conflicts.labels("cluster").inc()
                continue
            if released:
                self._metrics.releases.labels("vnode-ip").inc(len(released))
                log.info(
                    "Released the addresses of removed vNodes",
                    uid=uid,
                    generation=generation,
                    addresses={vnode: str(removed[vnode]) for vnode in sorted(removed)},
                )
            return
        raise Contention(f"the index of cluster {uid} kept changing while releasing removed vNodes")

    async def _claim(self, address: IPv4Address, claim: IpClaim) -> IpClaim | None:
        """The claim standing at `address` after trying to take it: `claim` when this call took it,
        an earlier one of the same vNode (a retry, or a replica), another owner's, or None if it was
        released in between (free again: the next round tries once more)."""
        try:
            await self._store.create_ip_claim(address, claim)
        except RevisionConflict:
            existing = await self._store.ip_claim(address)
            if existing is not None and not existing.value.owned_by(claim.uid, claim.vnode):
                self._metrics.claim_conflicts.labels("ip").inc()
            return existing.value if existing is not None else None
        self._metrics.allocations.labels("vnode-ip").inc()
        log.info("Claimed address", address=str(address), uid=claim.uid, vnode=claim.vnode)
        return claim

    async def release(self, uid: str) -> list[IPv4Address]:
        """Releases everything the cluster holds; a repeat finds less (or nothing) left to release.

        The tombstone goes first (from then on no claim for the uid is made, and an allocation in
        flight undoes its own), then the addresses, the index, and the network last: whatever a
        crash leaves behind, the redelivered cluster.vnodes.deleted finds and finishes.
        """
        if not logic.valid_uid(uid):
            return []  # never a key in the bucket, so nothing was ever claimed for it
        now = self._clock()

        def tombstoned(table: NetworkTable) -> NetworkTable | None:
            return None if uid in table.released else table.with_tombstone(uid, now, now - self._tombstone_retention)

        def unclaimed(table: NetworkTable) -> NetworkTable | None:
            return table.without(uid) if uid in table.clusters else None

        await self._change_networks(uid, tombstoned)
        released = await self._release_addresses(uid)
        network_released = await self._change_networks(uid, unclaimed)
        if network_released:
            self._metrics.releases.labels("network").inc()
        if released or network_released:
            log.info("Released cluster", uid=uid, addresses=[str(a) for a in released], network=network_released)
        return released

    async def _release_addresses(self, uid: str) -> list[IPv4Address]:
        claims = await self._store.ip_claims()
        released = [
            address
            for address, claim in sorted(claims.items())
            if claim.value.uid == uid and await self._store.delete_ip_claim(address, claim.revision)
        ]
        await self._store.delete_cluster_record(uid)
        if released:
            self._metrics.releases.labels("vnode-ip").inc(len(released))
        return released

    async def _change_networks(self, uid: str, change: Callable[[NetworkTable], NetworkTable | None]) -> bool:
        """Writes `change(table)` compare-and-set; False when it says there is nothing to change."""
        async with self._networks_turn:
            for _ in range(MAX_ATTEMPTS):
                current = await self._store.network_table()
                changed = change(current.value if current is not None else NetworkTable())
                if changed is None:
                    return False
                try:
                    await self._store.put_network_table(changed, current.revision if current is not None else None)
                except RevisionConflict:
                    self._metrics.claim_conflicts.labels("networks").inc()
                    continue
                return True
        raise Contention(f"the network table kept changing while releasing cluster {uid}")

    async def allocations(self) -> list[ClusterAllocation]:
        claims = await self._store.ip_claims()
        table = await self._store.networks()
        return logic.cluster_allocations(table, {a: c.value for a, c in claims.items()})

    async def allocation(self, cluster_id: str) -> ClusterAllocation | None:
        """The cluster's newest claim (see NetworkTable.newest_for)."""
        candidates = [a for a in await self.allocations() if a.cluster_id == cluster_id]
        return max(candidates, key=lambda allocation: allocation.claimed_at, default=None)

    async def pool_usage(self) -> list[PoolUsage]:
        claims = await self._store.ip_claims()
        table = await self._store.networks()
        usages = logic.pool_usages(self._pool, self._layout, claims.keys(), table)
        self._metrics.observe_pools(usages)
        return usages

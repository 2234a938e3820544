"""The reconcile, at start and then periodically: repairs cluster indexes from the ip.* claims and
finds orphaned addresses (cluster gone and no vNode pod has them); reports them in logs, metrics and
the read API, and releases those older than the grace period."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from ipaddress import IPv4Address

import structlog
from pydantic import AwareDatetime

from libs.events import utc_now
from services.ipmanager import logic
from services.ipmanager.adapters.kv import KvStore, RevisionConflict, Versioned
from services.ipmanager.adapters.metrics import IpManagerMetrics
from services.ipmanager.adapters.pods import VNodePods
from services.ipmanager.logic import AddressPool, NetworkLayout, Orphan, Repair, View
from services.ipmanager.records import ClusterRecord

log = structlog.get_logger(__name__)


class ReconcileReport(View):
    checked_at: AwareDatetime
    pods_checked: bool
    """False when the reconcile runs without Kubernetes: then nothing is judged orphaned."""
    claims: int
    repaired: int
    orphans: tuple[Orphan, ...]
    released: tuple[IPv4Address, ...]


class Reconciler:
    def __init__(
        self,
        store: KvStore,
        pods: VNodePods | None,
        *,
        layout: NetworkLayout,
        pool: AddressPool,
        metrics: IpManagerMetrics,
        grace_s: float,
        interval_s: float,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._store = store
        self._pods = pods
        self._layout = layout
        self._pool = pool
        self._metrics = metrics
        self._grace_s = grace_s
        self._interval_s = interval_s
        self._clock = clock
        self.last_report: ReconcileReport | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:  # an unreachable apiserver must not stop allocations
                self._metrics.reconciles.labels("error").inc()
                log.exception("Reconcile failed; trying again next round")
            await asyncio.sleep(self._interval_s)

    async def reconcile(self) -> ReconcileReport:
        # Claims before the table: a network claim is written before any address claim of its
        # cluster, so a claim seen here whose network is missing from the later table was released.
        versioned_claims = await self._store.ip_claims()
        table = await self._store.networks()
        records = await self._store.cluster_records()
        pod_addresses = await self._pods.addresses() if self._pods is not None else None
        claims = {address: claim.value for address, claim in versioned_claims.items()}
        now = self._clock()
        plan = logic.plan_reconcile(
            claims=claims,
            table=table,
            records={uid: record.value for uid, record in records.items()},
            pod_addresses=pod_addresses,
            now=now,
            grace_s=self._grace_s,
        )
        repaired = await self._repair(plan.repairs, records)
        reported_before = {o.address for o in self.last_report.orphans} if self.last_report else set()
        released: list[IPv4Address] = []
        for orphan in plan.orphans:
            # Warn once per orphan, not on every round of its grace period.
            (log.info if orphan.address in reported_before and not orphan.due else log.warning)(
                "Found orphaned address",
                address=str(orphan.address),
                reason=orphan.reason,
                uid=orphan.uid,
                cluster_id=orphan.cluster_id,
                vnode=orphan.vnode,
                age_s=orphan.age_s,
                releasing=orphan.due,
            )
            revision = versioned_claims[orphan.address].revision
            if orphan.due and await self._store.delete_ip_claim(orphan.address, revision):
                released.append(orphan.address)
        self._metrics.observe_orphans(o for o in plan.orphans if o.address not in released)
        self._metrics.orphans_released.inc(len(released))
        self._metrics.observe_pools(
            logic.pool_usages(self._pool, self._layout, set(claims) - set(released), table)
        )
        self._metrics.reconciles.labels("ok").inc()
        self._metrics.last_reconcile.set(now.timestamp())
        self.last_report = ReconcileReport(
            checked_at=now,
            pods_checked=pod_addresses is not None,
            claims=len(claims),
            repaired=repaired,
            orphans=plan.orphans,
            released=tuple(released),
        )
        log.info(
            "Reconciled",
            claims=len(claims),
            repaired=repaired,
            orphans=len(plan.orphans),
            released=len(released),
            pods_checked=pod_addresses is not None,
        )
        return self.last_report

    async def _repair(self, repairs: Sequence[Repair], records: dict[str, Versioned[ClusterRecord]]) -> int:
        by_uid: dict[str, list[Repair]] = {}
        for repair in repairs:
            by_uid.setdefault(repair.uid, []).append(repair)
        repaired = 0
        for uid, fixes in by_uid.items():
            current = records.get(uid)
            record = current.value if current else ClusterRecord(uid=uid, cluster_id=fixes[0].cluster_id)
            vnodes = dict(record.vnodes)
            for fix in fixes:
                vnodes[fix.vnode] = fix.address
            try:
                # CAS on the revision the plan was made from: if an allocation wrote the index since,
                # this round's view is stale and the next round decides again.
                await self._store.put_cluster_record(
                    record.model_copy(update={"vnodes": vnodes}), current.revision if current else None
                )
            except RevisionConflict:
                log.info("Cluster index changed while repairing it; leaving it to the next round", uid=uid)
                continue
            if uid in (await self._store.networks()).released:
                # Released since this round's look (the tombstone goes first): its release may have deleted
                # the index before this write put it back.
                await self._store.delete_cluster_record(uid)
                log.info("Cluster released while repairing its index; removed the index again", uid=uid)
                continue
            repaired += len(fixes)
            self._metrics.index_repairs.inc(len(fixes))
            log.warning(
                "Repaired cluster index from address claims",
                uid=uid,
                vnodes={fix.vnode: str(fix.address) for fix in fixes},
            )
        return repaired

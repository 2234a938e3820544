"""Prometheus metrics of the ipmanager (served on /metrics by the runtime). Dashboards use these names:

    vk8s_ipmanager_pool_addresses{pool="vnode-ips", state="free|allocated"}          gauge
        vNode addresses of the reserved pool.
    vk8s_ipmanager_pool_cidrs{pool="pod-cidrs|service-cidrs", state="free|allocated|reserved"}  gauge
        CIDR blocks of the carving pools; reserved = overlapping a host range.
    vk8s_ipmanager_allocations_total{kind="vnode-ip|pod-cidr|service-cidr"}          counter
        New claims (a given CIDR counts too); repeats of an existing claim do not.
    vk8s_ipmanager_releases_total{kind="vnode-ip|network"}                            counter
        Claims released on cluster.vnodes.deleted (a network = a cluster's pod and service CIDR).
    vk8s_ipmanager_claim_conflicts_total{key="networks|cluster|ip"}                  counter
        Compare-and-set writes that lost a race and were retried.
    vk8s_ipmanager_network_rejections_total{reason="NetworkOverlap|NetworkImmutable"} counter
        Specs refused because of their CIDRs.
    vk8s_ipmanager_orphans{reason="ClusterGone|Superseded"}                          gauge
        Orphaned addresses the last reconcile found and kept (still within the grace period).
    vk8s_ipmanager_orphans_released_total                                            counter
    vk8s_ipmanager_index_repairs_total                                               counter
        Cluster index entries rebuilt from the ip.* claims.
    vk8s_ipmanager_reconciles_total{outcome="ok|error"}                              counter
    vk8s_ipmanager_last_reconcile_timestamp_seconds                                  gauge
        Unix time of the last successful reconcile (alert when it stops moving).

The pool gauges are set by every reconcile (VK8S_IPMANAGER_RECONCILE_INTERVAL_S) and every GET /v1/pools.
The consumer wrapper adds vk8s_ipmanager_messages_total, vk8s_ipmanager_message_handling_seconds,
vk8s_ipmanager_redeliveries_total and vk8s_ipmanager_events_published_total (libs/events/metrics.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from libs.events import start_at_zero
from services.ipmanager.logic import Orphan, PoolUsage

# Kinds of claim whose compare-and-set write can lose to another writer.
CLAIM_KINDS = ("networks", "cluster", "ip")
PREFIX = "vk8s_ipmanager"


class IpManagerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.pool_addresses = Gauge(
            f"{PREFIX}_pool_addresses", "vNode pool addresses by state.", ["pool", "state"], registry=registry
        )
        self.pool_cidrs = Gauge(
            f"{PREFIX}_pool_cidrs", "CIDR blocks of a carving pool by state.", ["pool", "state"], registry=registry
        )
        self.allocations = Counter(
            f"{PREFIX}_allocations_total", "New claims by kind.", ["kind"], registry=registry
        )
        self.releases = Counter(f"{PREFIX}_releases_total", "Released claims by kind.", ["kind"], registry=registry)
        self.claim_conflicts = Counter(
            f"{PREFIX}_claim_conflicts_total", "Compare-and-set writes that lost a race.", ["key"], registry=registry
        )
        self.network_rejections = Counter(
            f"{PREFIX}_network_rejections_total", "Specs refused for their CIDRs.", ["reason"], registry=registry
        )
        self.orphans = Gauge(
            f"{PREFIX}_orphans", "Orphaned addresses the last reconcile kept.", ["reason"], registry=registry
        )
        self.orphans_released = Counter(
            f"{PREFIX}_orphans_released_total", "Orphaned addresses released.", registry=registry
        )
        self.index_repairs = Counter(
            f"{PREFIX}_index_repairs_total", "Cluster index entries rebuilt from ip.* claims.", registry=registry
        )
        self.reconciles = Counter(f"{PREFIX}_reconciles_total", "Reconcile runs.", ["outcome"], registry=registry)
        self.last_reconcile = Gauge(
            f"{PREFIX}_last_reconcile_timestamp_seconds",
            "Unix time of the last successful reconcile.",
            registry=registry,
        )
        start_at_zero(self.claim_conflicts, key=CLAIM_KINDS)
        for reason in ("ClusterGone", "Superseded"):
            self.orphans.labels(reason).set(0)

    def observe_pools(self, usages: Iterable[PoolUsage]) -> None:
        for usage in usages:
            if usage.unit == "address":
                self.pool_addresses.labels(usage.name, "free").set(usage.free)
                self.pool_addresses.labels(usage.name, "allocated").set(usage.allocated)
            else:
                self.pool_cidrs.labels(usage.name, "free").set(usage.free)
                self.pool_cidrs.labels(usage.name, "allocated").set(usage.allocated)
                self.pool_cidrs.labels(usage.name, "reserved").set(usage.reserved)

    def observe_orphans(self, orphans: Iterable[Orphan]) -> None:
        counts = {"ClusterGone": 0, "Superseded": 0}
        for orphan in orphans:
            counts[orphan.reason] += 1
        for reason, count in counts.items():
            self.orphans.labels(reason).set(count)

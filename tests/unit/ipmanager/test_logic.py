"""The ipmanager's pure decisions: CIDR carving and overlap rejection, vNode address plans, the reconcile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any

import pytest

from services.ipmanager.logic import (
    AddressPool,
    CidrPool,
    ClusterReleased,
    NetworkConflict,
    NetworkImmutable,
    NetworkLayout,
    NetworkRequest,
    PoolExhausted,
    Reserved,
    claim_network,
    cluster_allocations,
    plan_reconcile,
    plan_vnode_addresses,
    pool_usages,
)
from services.ipmanager.records import ClusterRecord, IpClaim, NetworkClaim, NetworkTable

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LAYOUT = NetworkLayout(
    reserved=(
        Reserved("the host pod CIDR", ip_network("10.244.0.0/16")),
        Reserved("the host service CIDR", ip_network("10.96.0.0/12")),
        Reserved("the host node network", ip_network("192.168.0.0/16")),
        Reserved("the vNode IP pool", ip_network("10.250.0.0/24")),
    ),
    pod_pool=CidrPool("pod-cidrs", IPv4Network("100.64.0.0/14"), 16),
    service_pool=CidrPool("service-cidrs", IPv4Network("10.64.0.0/18"), 20),
)
POOL = AddressPool(IPv4Network("10.250.0.0/24"))


def claim(table: NetworkTable, uid: str, request: NetworkRequest | None = None, generation: int = 1, **kw: Any) -> NetworkClaim:
    return claim_network(
        table, uid=uid, cluster_id=kw.get("cluster_id", f"team/{uid}"), generation=generation,
        request=request if request is not None else NetworkRequest(), layout=kw.get("layout", LAYOUT), now=NOW,
    )  # fmt: skip


def request(pod: str | None = None, service: str | None = None) -> NetworkRequest:
    return NetworkRequest(ip_network(pod) if pod else None, ip_network(service) if service else None)


def ip_claim(uid: str, vnode: str, age_s: float = 0) -> IpClaim:
    return IpClaim(uid=uid, cluster_id=f"team/{uid}", vnode=vnode, claimed_at=NOW - timedelta(seconds=age_s))


class TestNetworkRequest:
    def test_the_api_defaults_mean_allocate(self) -> None:
        assert NetworkRequest.from_spec("90.244.0.0/16", "90.96.0.0/12") == NetworkRequest(None, None)

    def test_other_values_are_given(self) -> None:
        assert NetworkRequest.from_spec("172.20.0.0/16", "90.96.0.0/12") == request("172.20.0.0/16")


class TestClaimNetwork:
    def test_carves_the_lowest_free_blocks(self) -> None:
        first = claim(NetworkTable(), "a")
        assert (str(first.pod_cidr), str(first.service_cidr)) == ("100.64.0.0/16", "10.64.0.0/20")
        assert not first.pod_cidr_given and not first.service_cidr_given
        second = claim(NetworkTable().with_claim(first), "b")
        assert (str(second.pod_cidr), str(second.service_cidr)) == ("100.65.0.0/16", "10.64.16.0/20")

    def test_carving_skips_host_ranges_and_given_networks(self) -> None:
        layout = NetworkLayout(
            reserved=(Reserved("the host pod CIDR", ip_network("100.64.0.0/15")),),
            pod_pool=LAYOUT.pod_pool,
            service_pool=LAYOUT.service_pool,
        )
        given = claim(NetworkTable(), "a", request("100.66.0.0/16", "10.64.0.0/19"), layout=layout)
        carved = claim(NetworkTable().with_claim(given), "b", layout=layout)
        assert (str(carved.pod_cidr), str(carved.service_cidr)) == ("100.67.0.0/16", "10.64.32.0/20")

    def test_given_cidrs_are_kept_as_given(self) -> None:
        result = claim(NetworkTable(), "a", request("172.20.0.0/16", "172.21.0.0/20"))
        assert (str(result.pod_cidr), str(result.service_cidr)) == ("172.20.0.0/16", "172.21.0.0/20")
        assert result.pod_cidr_given and result.service_cidr_given

    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            (request(pod="10.244.0.0/17"), "podNetworkCidr 10.244.0.0/17 overlaps the host pod CIDR (10.244.0.0/16)"),
            (request(service="10.96.0.0/16"), "serviceCidr 10.96.0.0/16 overlaps the host service CIDR (10.96.0.0/12)"),
            (
                request(pod="192.168.8.0/21"),
                "podNetworkCidr 192.168.8.0/21 overlaps the host node network (192.168.0.0/16)",
            ),
            (request(pod="10.250.0.0/16"), "podNetworkCidr 10.250.0.0/16 overlaps the vNode IP pool (10.250.0.0/24)"),
        ],
    )
    def test_given_cidrs_overlapping_host_ranges_are_refused(self, given: NetworkRequest, expected: str) -> None:
        with pytest.raises(NetworkConflict) as refused:
            claim(NetworkTable(), "a", given)
        assert refused.value.problems == (f"spec.kubernetes.{expected}",)

    def test_given_cidrs_overlapping_another_cluster_name_it(self) -> None:
        other = claim(NetworkTable(), "b", cluster_id="team-b/dev")  # carved 100.64.0.0/16, 10.64.0.0/20
        with pytest.raises(NetworkConflict) as refused:
            claim(NetworkTable().with_claim(other), "a", request("100.64.128.0/17", "10.64.0.0/24"))
        assert refused.value.problems == (
            "spec.kubernetes.podNetworkCidr 100.64.128.0/17 "
            "overlaps the pod network of cluster team-b/dev (100.64.0.0/16)",
            "spec.kubernetes.serviceCidr 10.64.0.0/24 "
            "overlaps the service network of cluster team-b/dev (10.64.0.0/20)",
        )

    def test_given_pod_and_service_cidrs_must_not_overlap_each_other(self) -> None:
        with pytest.raises(NetworkConflict, match=r"serviceCidr 172.20.0.0/20 overlaps spec.kubernetes.podNetworkCidr"):
            claim(NetworkTable(), "a", request("172.20.0.0/16", "172.20.0.0/20"))

    def test_ipv6_ranges_never_overlap_ipv4_ones(self) -> None:
        result = claim(NetworkTable(), "a", request("fd00:10::/56", "fd00:20::/108"))
        assert str(result.pod_cidr) == "fd00:10::/56"

    def test_the_same_request_again_returns_the_existing_claim(self) -> None:
        first = claim(NetworkTable(), "a", request(pod="172.20.0.0/16"))
        table = NetworkTable().with_claim(first)
        assert claim(table, "a", request(pod="172.20.0.0/16"), generation=2) is first
        assert claim(table, "a", NetworkRequest(), generation=3) is first

    def test_a_changed_cidr_is_refused(self) -> None:
        table = NetworkTable().with_claim(claim(NetworkTable(), "a", generation=2))
        with pytest.raises(NetworkImmutable, match=r"podNetworkCidr cannot change from 100.64.0.0/16 to 172.20.0.0/16"):
            claim(table, "a", request(pod="172.20.0.0/16"), generation=3)

    def test_an_older_generation_does_not_undo_a_newer_claim(self) -> None:
        newer = claim(NetworkTable(), "a", request(pod="172.20.0.0/16"), generation=3)
        assert claim(NetworkTable().with_claim(newer), "a", request(pod="172.30.0.0/16"), generation=2) is newer

    def test_an_exhausted_pool_says_which(self) -> None:
        table = NetworkTable()
        for index in range(4):
            table = table.with_claim(claim(table, f"c{index}"))
        with pytest.raises(PoolExhausted, match=r"pod-cidrs pool 100.64.0.0/14 has no free /16"):
            claim(table, "c4")


class TestCidrPool:
    def test_first_free_jumps_over_large_blockers(self) -> None:
        pool = CidrPool("p", IPv4Network("10.0.0.0/8"), 24)
        assert str(pool.first_free([ip_network("10.0.0.0/9"), ip_network("10.128.0.0/24")])) == "10.128.1.0/24"

    def test_blocks_touched_counts_each_block_once(self) -> None:
        pool = CidrPool("p", IPv4Network("10.0.0.0/16"), 20)
        networks = [ip_network(n) for n in ("10.0.0.0/24", "10.0.1.0/24", "10.0.32.0/19", "9.0.0.0/8")]
        assert pool.blocks_touched(networks) == 3
        assert pool.blocks_touched([ip_network("10.0.0.0/8")]) == 16


class TestPlanVNodeAddresses:
    def test_gives_distinct_addresses_stable_across_replanning(self) -> None:
        vnodes = ["master", "worker-0"]
        planned = plan_vnode_addresses(uid="u1", planned={}, vnodes=vnodes, claims={}, pool=POOL)
        assert len(set(planned.values())) == 2 and all(address in POOL for address in planned.values())
        claims = {address: ip_claim("u1", vnode) for vnode, address in planned.items()}
        assert plan_vnode_addresses(uid="u1", planned={}, vnodes=vnodes, claims=claims, pool=POOL) == planned
        assert plan_vnode_addresses(uid="u1", planned={}, vnodes=vnodes, claims={}, pool=POOL) == planned

    def test_keeps_an_intent_that_is_still_free(self) -> None:
        intent = {"master": IPv4Address("10.250.0.7")}
        assert plan_vnode_addresses(uid="u1", planned=intent, vnodes=["master"], claims={}, pool=POOL) == intent

    def test_replaces_an_intent_another_cluster_claimed(self) -> None:
        taken = IPv4Address("10.250.0.7")
        planned = plan_vnode_addresses(
            uid="u1", planned={"master": taken}, vnodes=["master"], claims={taken: ip_claim("u2", "master")}, pool=POOL
        )
        assert planned["master"] != taken

    def test_adopts_a_claim_the_index_does_not_name(self) -> None:
        claimed = IPv4Address("10.250.0.9")
        planned = plan_vnode_addresses(
            uid="u1", planned={"master": IPv4Address("10.250.0.7")}, vnodes=["master"],
            claims={claimed: ip_claim("u1", "master")}, pool=POOL,
        )  # fmt: skip
        assert planned == {"master": claimed}

    def test_keeps_vnodes_not_placed_now(self) -> None:
        kept = {"old-worker": IPv4Address("10.250.0.3")}
        planned = plan_vnode_addresses(uid="u1", planned=kept, vnodes=["master"], claims={}, pool=POOL)
        assert planned["old-worker"] == kept["old-worker"] and planned["master"] != kept["old-worker"]

    def test_pool_skips_network_and_broadcast_and_runs_out(self) -> None:
        pool = AddressPool(IPv4Network("10.250.0.0/30"))
        planned = plan_vnode_addresses(uid="u1", planned={}, vnodes=["a", "b"], claims={}, pool=pool)
        assert sorted(map(str, planned.values())) == ["10.250.0.1", "10.250.0.2"]
        with pytest.raises(PoolExhausted, match=r"vNode IP pool 10.250.0.0/30 has no free address"):
            plan_vnode_addresses(uid="u1", planned=planned, vnodes=["a", "b", "c"], claims={}, pool=pool)


class TestTombstones:
    def test_a_released_cluster_claims_no_network_again(self) -> None:
        table = NetworkTable()
        table = table.with_claim(claim(table, "a")).without("a").with_tombstone("a", NOW, NOW - timedelta(days=14))

        with pytest.raises(ClusterReleased, match=r"cluster team/a \(uid a\) was deleted"):
            claim(table, "a")
        assert claim(table, "b").uid == "b"

    def test_tombstones_past_the_retention_are_dropped_on_the_next_release(self) -> None:
        old = NetworkTable().with_tombstone("old", NOW - timedelta(days=15), NOW - timedelta(days=29))

        table = old.with_tombstone("new", NOW, NOW - timedelta(days=14))

        assert set(table.released) == {"new"}


class TestPlanReconcile:
    A, B, C = IPv4Address("10.250.0.1"), IPv4Address("10.250.0.2"), IPv4Address("10.250.0.3")

    def table(self, *uids: str) -> NetworkTable:
        table = NetworkTable()
        for uid in uids:
            table = table.with_claim(claim(table, uid))
        return table

    def test_repairs_an_index_missing_a_claim(self) -> None:
        plan = plan_reconcile(
            claims={self.A: ip_claim("u1", "master")}, table=self.table("u1"), records={},
            pod_addresses=set(), now=NOW, grace_s=60,
        )  # fmt: skip
        assert [(r.uid, r.vnode, r.address) for r in plan.repairs] == [("u1", "master", self.A)]
        assert plan.orphans == ()

    def test_a_second_claim_for_an_indexed_vnode_is_superseded(self) -> None:
        record = ClusterRecord(uid="u1", cluster_id="team/u1", vnodes={"master": self.B})
        plan = plan_reconcile(
            claims={self.A: ip_claim("u1", "master", age_s=120), self.B: ip_claim("u1", "master")},
            table=self.table("u1"), records={"u1": record}, pod_addresses={self.B}, now=NOW, grace_s=60,
        )  # fmt: skip
        assert plan.repairs == ()
        assert [(o.address, o.reason, o.due) for o in plan.orphans] == [(self.A, "Superseded", True)]

    def test_claims_of_a_gone_cluster_are_orphans_unless_a_pod_holds_them(self) -> None:
        claims = {self.A: ip_claim("gone", "master", age_s=30), self.B: ip_claim("gone", "worker", age_s=600),
                  self.C: ip_claim("gone", "other")}  # fmt: skip
        plan = plan_reconcile(
            claims=claims, table=NetworkTable(), records={}, pod_addresses={self.C}, now=NOW, grace_s=60
        )
        assert [(o.address, o.reason, o.due) for o in plan.orphans] == [
            (self.A, "ClusterGone", False),
            (self.B, "ClusterGone", True),
        ]

    def test_claims_of_a_released_cluster_are_due_at_once(self) -> None:
        released = NetworkTable().with_tombstone("gone", NOW, NOW - timedelta(days=1))
        plan = plan_reconcile(
            claims={self.A: ip_claim("gone", "master", age_s=1)}, table=released, records={},
            pod_addresses=set(), now=NOW, grace_s=900,
        )  # fmt: skip
        assert [(o.address, o.reason, o.due) for o in plan.orphans] == [(self.A, "ClusterGone", True)]

    def test_a_cluster_being_released_is_not_repaired(self) -> None:
        """Tombstoned, its network not yet removed: the release is deleting its index."""
        releasing = self.table("u1").with_tombstone("u1", NOW, NOW - timedelta(days=1))
        plan = plan_reconcile(
            claims={self.A: ip_claim("u1", "master")}, table=releasing, records={},
            pod_addresses=set(), now=NOW, grace_s=900,
        )  # fmt: skip
        assert plan.repairs == ()
        assert [(o.address, o.reason, o.due) for o in plan.orphans] == [(self.A, "ClusterGone", True)]

    def test_nothing_is_orphaned_without_pod_information(self) -> None:
        plan = plan_reconcile(
            claims={self.A: ip_claim("gone", "master", age_s=600)}, table=NetworkTable(), records={},
            pod_addresses=None, now=NOW, grace_s=60,
        )  # fmt: skip
        assert plan.orphans == ()


def test_views_and_pool_usage() -> None:
    table = NetworkTable()
    for uid in ("u1", "u2"):
        table = table.with_claim(claim(table, uid))
    claims = {IPv4Address("10.250.0.1"): ip_claim("u1", "master"), IPv4Address("10.250.0.2"): ip_claim("u1", "worker")}
    allocations = cluster_allocations(table, claims)
    assert [(a.uid, [(v.vnode, str(v.address)) for v in a.addresses]) for a in allocations] == [
        ("u1", [("master", "10.250.0.1"), ("worker", "10.250.0.2")]),
        ("u2", []),
    ]
    assert allocations[0].model_dump(mode="json", by_alias=True)["podCidr"] == "100.64.0.0/16"
    usages = {u.name: (u.total, u.allocated, u.reserved, u.free) for u in pool_usages(POOL, LAYOUT, claims, table)}
    assert usages == {
        "vnode-ips": (254, 2, 0, 252),
        "pod-cidrs": (4, 2, 0, 2),
        "service-cidrs": (4, 2, 0, 2),
    }

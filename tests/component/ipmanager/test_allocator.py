"""The allocator against a real JetStream KV bucket: races, replicas, crash remnants, release."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, ip_network

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from libs.events import ensure_kv
from services.ipmanager.adapters.kv import KvStore, Versioned
from services.ipmanager.adapters.metrics import IpManagerMetrics
from services.ipmanager.allocator import Allocator, NetworkNotClaimed, StaleAllocation
from services.ipmanager.logic import ClusterReleased, NetworkRequest, PoolExhausted
from services.ipmanager.reconciler import Reconciler
from services.ipmanager.records import ClusterRecord, IpClaim
from services.ipmanager.settings import IpManagerSettings
from tests.component.ipmanager.support import BUCKET, allocator_for, assert_unique, claims_in, vnode_names

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
async def kv(js: JetStreamContext) -> KeyValue:
    return await ensure_kv(js, BUCKET)


@pytest.fixture
async def second_replica_kv(nats_url: str, kv: KeyValue) -> AsyncIterator[KeyValue]:
    """The same bucket through a connection of its own, as a second replica sees it."""
    client = await nats.connect(nats_url, name="vk8s-tests-replica-2")
    yield await client.jetstream().key_value(BUCKET)
    await client.drain()


async def provision(allocator: Allocator, index: int, workers: int) -> dict[str, IPv4Address]:
    uid, cluster_id = f"uid-{index:03d}", f"team-{index % 7}/cluster-{index}"
    await allocator.claim_network(uid=uid, cluster_id=cluster_id, generation=1, request=NetworkRequest())
    _, addresses = await allocator.allocate_vnode_ips(cluster_id, 1, vnode_names(workers))
    return addresses


async def test_fifty_concurrent_allocations_on_two_replicas_never_collide(
    kv: KeyValue, second_replica_kv: KeyValue
) -> None:
    replicas = [allocator_for(kv), allocator_for(second_replica_kv)]
    results = await asyncio.gather(*(provision(replicas[i % 2], i, workers=1) for i in range(50)))

    addresses = [address for result in results for address in result.values()]
    assert len(addresses) == 100
    assert_unique(addresses)
    claims = await claims_in(kv)
    assert set(claims) == set(addresses), "a claim no allocation returned, or the reverse"
    for index, result in enumerate(results):
        for vnode, address in result.items():
            assert claims[address].owned_by(f"uid-{index:03d}", vnode)

    networks = list((await KvStore(kv).networks()).clusters.values())
    ranges = [n.pod_cidr for n in networks] + [n.service_cidr for n in networks]
    assert len(networks) == 50
    assert not [(a, b) for i, a in enumerate(ranges) for b in ranges[i + 1 :] if a.overlaps(b)]

    # Redelivered everywhere, on either replica: the same address for the same vNode.
    again = await asyncio.gather(*(provision(replicas[(i + 1) % 2], i, workers=1) for i in range(50)))
    assert again == results
    assert len(await claims_in(kv)) == 100


async def test_racing_replicas_fill_a_small_pool_to_the_last_address(
    kv: KeyValue, second_replica_kv: KeyValue
) -> None:
    settings = IpManagerSettings(vnode_ip_pool=IPv4Network("10.250.0.0/26"))  # 62 addresses
    registries = [CollectorRegistry(), CollectorRegistry()]
    replicas = [allocator_for(kv, settings, registries[0]), allocator_for(second_replica_kv, settings, registries[1])]
    results = await asyncio.gather(*(provision(replicas[i % 2], i, workers=1) for i in range(31)))
    addresses = [address for result in results for address in result.values()]
    assert_unique(addresses)
    assert len(addresses) == 62 == len(await claims_in(kv))
    lost_races = sum(r.get_sample_value("vk8s_ipmanager_claim_conflicts_total", {"key": "ip"}) or 0 for r in registries)
    assert lost_races > 0, "62 picks from 62 addresses never raced: the conflict path went untested"
    with pytest.raises(PoolExhausted):
        await provision(replicas[0], 31, workers=0)


async def test_an_intent_left_by_a_crash_is_completed_with_the_same_address(kv: KeyValue) -> None:
    allocator, store = allocator_for(kv), KvStore(kv)
    await allocator.claim_network(uid="u1", cluster_id="ns/c1", generation=1, request=NetworkRequest())
    intent = IPv4Address("10.250.1.17")
    # The process died after writing the index, before creating ip.10-250-1-17.
    await store.put_cluster_record(ClusterRecord(uid="u1", cluster_id="ns/c1", vnodes={"master": intent}), None)

    _, addresses = await allocator.allocate_vnode_ips("ns/c1", 1, ["master"])
    assert addresses == {"master": intent}
    assert (await claims_in(kv))[intent].owned_by("u1", "master")


async def test_an_intent_another_cluster_took_meanwhile_is_replaced(kv: KeyValue) -> None:
    allocator, store = allocator_for(kv), KvStore(kv)
    await allocator.claim_network(uid="u1", cluster_id="ns/c1", generation=1, request=NetworkRequest())
    contested = IPv4Address("10.250.1.17")
    await store.put_cluster_record(ClusterRecord(uid="u1", cluster_id="ns/c1", vnodes={"master": contested}), None)
    await store.create_ip_claim(contested, IpClaim(uid="u2", cluster_id="ns/c2", vnode="master", claimed_at=NOW))

    _, addresses = await allocator.allocate_vnode_ips("ns/c1", 1, ["master"])
    assert addresses["master"] != contested
    claims = await claims_in(kv)
    assert claims[contested].uid == "u2" and claims[addresses["master"]].owned_by("u1", "master")


def reconciler_without_pods(store: KvStore) -> Reconciler:
    settings = IpManagerSettings()
    return Reconciler(
        store, None, layout=settings.network_layout(), pool=settings.address_pool(),
        metrics=IpManagerMetrics(CollectorRegistry()), grace_s=0, interval_s=60,
    )  # fmt: skip


async def test_the_reconcile_repairs_an_index_missing_a_claim(kv: KeyValue) -> None:
    allocator, store = allocator_for(kv), KvStore(kv)
    await allocator.claim_network(uid="u1", cluster_id="ns/c1", generation=1, request=NetworkRequest())
    claimed = IPv4Address("10.250.2.9")
    # The address was claimed, then the index entry naming it was lost.
    await store.create_ip_claim(claimed, IpClaim(uid="u1", cluster_id="ns/c1", vnode="master", claimed_at=NOW))

    report = await reconciler_without_pods(store).reconcile()
    assert report.repaired == 1 and report.orphans == () and not report.pods_checked
    record = await store.cluster_record("u1")
    assert record is not None and record.value.vnodes == {"master": claimed}

    _, addresses = await allocator.allocate_vnode_ips("ns/c1", 1, ["master", "worker-0"])
    assert addresses["master"] == claimed
    assert len(await claims_in(kv)) == 2


class ReleasedWhileReconciling(KvStore):
    """The bucket as the reconcile sees it when the cluster's whole release runs after it has read the
    claims and the network table, and before it reads the cluster indexes."""

    def __init__(self, kv: KeyValue, release: Callable[[], Awaitable[object]]):
        super().__init__(kv)
        self._release = release

    async def cluster_records(self) -> dict[str, Versioned[ClusterRecord]]:
        await self._release()
        return await super().cluster_records()


async def test_a_cluster_released_while_the_reconcile_repairs_its_index_keeps_no_index(kv: KeyValue) -> None:
    allocator, store = allocator_for(kv), KvStore(kv)
    await allocator.claim_network(uid="u1", cluster_id="ns/c1", generation=1, request=NetworkRequest())
    claimed = IPv4Address("10.250.2.9")
    await store.create_ip_claim(claimed, IpClaim(uid="u1", cluster_id="ns/c1", vnode="master", claimed_at=NOW))

    report = await reconciler_without_pods(ReleasedWhileReconciling(kv, lambda: allocator.release("u1"))).reconcile()
    assert report.repaired == 0
    assert await store.cluster_record("u1") is None
    assert await claims_in(kv) == {}


async def test_the_next_retry_adopts_a_claim_made_before_its_index_entry(kv: KeyValue) -> None:
    allocator, store = allocator_for(kv), KvStore(kv)
    await allocator.claim_network(uid="u1", cluster_id="ns/c1", generation=1, request=NetworkRequest())
    # Where the allocator puts the master of u1, claimed with no index entry (a claim-first crash).
    first_choice = IpManagerSettings().address_pool().pick("u1/master", ())
    await store.create_ip_claim(first_choice, IpClaim(uid="u1", cluster_id="ns/c1", vnode="master", claimed_at=NOW))

    _, addresses = await allocator.allocate_vnode_ips("ns/c1", 1, ["master"])
    assert addresses == {"master": first_choice}
    assert list(await claims_in(kv)) == [first_choice]
    record = await store.cluster_record("u1")
    assert record is not None and record.value.vnodes == {"master": first_choice}


async def test_release_frees_everything_of_the_cluster_only_and_is_idempotent(kv: KeyValue) -> None:
    allocator, store = allocator_for(kv), KvStore(kv)
    for uid, cluster_id in (("u1", "team-a/c1"), ("u2", "team-b/c2")):
        await allocator.claim_network(uid=uid, cluster_id=cluster_id, generation=1, request=NetworkRequest())
        await allocator.allocate_vnode_ips(cluster_id, 1, ["master", "worker-0"])
    mine = {a for a, c in (await claims_in(kv)).items() if c.uid == "u1"}

    assert set(await allocator.release("u1")) == mine
    assert await allocator.release("u1") == []
    remaining = await claims_in(kv)
    assert {c.uid for c in remaining.values()} == {"u2"} and len(remaining) == 2
    assert list((await store.networks()).clusters) == ["u2"]
    assert await store.cluster_record("u1") is None

    # Released addresses and networks can be claimed again.
    await allocator.claim_network(uid="u3", cluster_id="team-a/c1", generation=1, request=NetworkRequest())
    _, addresses = await allocator.allocate_vnode_ips("team-a/c1", 1, ["master", "worker-0"])
    assert_unique([*addresses.values(), *remaining])


async def test_the_newest_uid_of_a_reused_name_gets_the_addresses(kv: KeyValue) -> None:
    allocator = allocator_for(kv)
    await allocator.claim_network(uid="old", cluster_id="ns/c", generation=1, request=NetworkRequest())
    await allocator.claim_network(
        uid="new", cluster_id="ns/c", generation=1, request=NetworkRequest(ip_network("172.20.0.0/16"))
    )
    network, addresses = await allocator.allocate_vnode_ips("ns/c", 1, ["master"])
    assert network.uid == "new" and str(network.pod_cidr) == "172.20.0.0/16"
    assert (await claims_in(kv))[addresses["master"]].uid == "new"


async def test_a_claim_handled_after_the_release_is_refused_and_holds_nothing(kv: KeyValue) -> None:
    allocator, store = allocator_for(kv), KvStore(kv)
    # The delete chain reached the ipmanager before the cluster's cluster.accepted did.
    assert await allocator.release("late") == []

    with pytest.raises(ClusterReleased):
        await allocator.claim_network(uid="late", cluster_id="ns/late", generation=1, request=NetworkRequest())
    table = await store.networks()
    assert table.clusters == {} and set(table.released) == {"late"}
    with pytest.raises(NetworkNotClaimed):
        await allocator.allocate_vnode_ips("ns/late", 1, ["master"])
    assert await claims_in(kv) == {}


async def test_deletes_racing_allocations_on_two_replicas_leave_nothing_behind(
    kv: KeyValue, second_replica_kv: KeyValue
) -> None:
    replicas = [allocator_for(kv), allocator_for(second_replica_kv)]
    clusters = [(f"uid-{i:02d}", f"team/c{i}") for i in range(20)]
    for uid, cluster_id in clusters:
        await replicas[0].claim_network(uid=uid, cluster_id=cluster_id, generation=1, request=NetworkRequest())

    async def allocate(index: int, cluster_id: str) -> None:
        with contextlib.suppress(ClusterReleased, NetworkNotClaimed):
            await replicas[index % 2].allocate_vnode_ips(cluster_id, 1, vnode_names(3))

    await asyncio.gather(
        *(allocate(i, cluster_id) for i, (_, cluster_id) in enumerate(clusters)),
        *(replicas[(i + 1) % 2].release(uid) for i, (uid, _) in enumerate(clusters)),
    )
    # A cluster.accepted redelivered after all that claims nothing either.
    for uid, cluster_id in clusters:
        with pytest.raises(ClusterReleased):
            await replicas[1].claim_network(uid=uid, cluster_id=cluster_id, generation=1, request=NetworkRequest())

    store = KvStore(kv)
    assert await claims_in(kv) == {}
    assert (await store.networks()).clusters == {}
    assert await store.cluster_records() == {}


async def test_scale_in_releases_the_removed_vnodes_addresses_at_once(kv: KeyValue) -> None:
    allocator, store = allocator_for(kv), KvStore(kv)
    await allocator.claim_network(uid="u1", cluster_id="ns/c1", generation=1, request=NetworkRequest())
    _, before = await allocator.allocate_vnode_ips("ns/c1", 1, ["master", "worker-0", "worker-1"])

    _, after = await allocator.allocate_vnode_ips("ns/c1", 2, ["master", "worker-0"])

    assert after == {vnode: before[vnode] for vnode in ("master", "worker-0")}
    assert set(await claims_in(kv)) == set(after.values())
    record = await store.cluster_record("u1")
    assert record is not None and record.value.vnodes == after and record.value.generation == 2
    # The older generation delivered again claims nothing back.
    with pytest.raises(StaleAllocation):
        await allocator.allocate_vnode_ips("ns/c1", 1, ["master", "worker-0", "worker-1"])
    assert set(await claims_in(kv)) == set(after.values())
    # Scaled out again, worker-1 gets an address, and nothing is given twice.
    _, again = await allocator.allocate_vnode_ips("ns/c1", 3, ["master", "worker-0", "worker-1"])
    assert_unique(list(again.values()))
    assert len(await claims_in(kv)) == 3

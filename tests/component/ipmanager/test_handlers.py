"""The ipmanager's handlers behind the real consumer wrapper, on a real JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from libs.api.models import DEFAULT_SERVICE_CIDR
from libs.events import (
    STREAM_NAME,
    Backoff,
    Consumer,
    Envelope,
    EventMetrics,
    StreamSettings,
    ensure_kv,
    ensure_stream,
    routes,
)
from libs.events.catalog import AskedNetworks
from services.ipmanager.adapters.kv import KvStore
from services.ipmanager.handlers import TOPOLOGY, IpManagerHandlers
from tests.component.ipmanager.support import (
    BUCKET,
    accepted,
    allocator_for,
    claims_in,
    collect,
    publish,
    scheduled,
    vnodes_deleted,
)
from tests.support.consumers import start_consumer


@pytest.fixture
async def kv(js: JetStreamContext) -> KeyValue:
    await ensure_stream(js, StreamSettings())
    return await ensure_kv(js, BUCKET)


@pytest.fixture
async def ipmanager(js: JetStreamContext, kv: KeyValue) -> AsyncIterator[Consumer]:
    consumer = await start_consumer(
        js,
        routes(TOPOLOGY, IpManagerHandlers(allocator=allocator_for(kv))),
        durable="ipmanager",
        metrics=EventMetrics("ipmanager", CollectorRegistry()),
        concurrency=4,
        backoff=Backoff(base_s=0.05, max_s=0.2),
        max_deliver=20,
    )
    yield consumer
    await consumer.stop()


def for_cluster(cluster_id: str) -> Any:
    return lambda events: any(event.cluster_id == cluster_id for event in events)


async def test_allocates_then_releases_a_cluster_outside_the_default_namespace(
    js: JetStreamContext, kv: KeyValue, ipmanager: Consumer
) -> None:
    await publish(js, accepted("team-x", "dev", "uid-x", workers=2), scheduled("team-x", "dev", workers=2))
    [allocated] = await collect(js, "cluster.ips.allocated", for_cluster("team-x/dev"))
    data = allocated.data
    assert data.uid == "uid-x"  # the object the addresses are for: vnode tells a re-created one by it
    assert set(data.vnode_ips) == {"master", "worker-0", "worker-1"}
    assert (data.pod_cidr, data.service_cidr) == ("100.64.0.0/16", "10.64.0.0/20")
    assert len(set(data.vnode_ips.values())) == 3
    assert {str(a) for a in await claims_in(kv)} == set(data.vnode_ips.values())

    await publish(js, vnodes_deleted("team-x", "dev", "uid-x"))
    [released] = await collect(js, "cluster.ips.released", for_cluster("team-x/dev"))
    assert released.data.uid == "uid-x"
    assert sorted(released.data.released) == sorted(data.vnode_ips.values())
    store = KvStore(kv)
    assert await claims_in(kv) == {}
    assert await store.cluster_record("uid-x") is None
    assert (await store.networks()).clusters == {}


async def test_a_scheduled_that_carries_the_networks_needs_no_accepted_first(
    js: JetStreamContext, kv: KeyValue, ipmanager: Consumer
) -> None:
    networks = AskedNetworks(pod_network_cidr="172.21.0.0/16", service_cidr=DEFAULT_SERVICE_CIDR)
    await publish(js, scheduled("team-z", "alone", uid="uid-z", networks=networks))
    [allocated] = await collect(js, "cluster.ips.allocated", for_cluster("team-z/alone"))
    assert (allocated.data.pod_cidr, allocated.data.service_cidr) == ("172.21.0.0/16", "10.64.0.0/20")
    info = await js.consumer_info(STREAM_NAME, "ipmanager")
    assert info.num_redelivered == 0  # claimed and allocated at the first delivery: no wait on another event
    # The cluster.accepted handled afterwards finds the same claim.
    await publish(js, accepted("team-z", "alone", "uid-z", pod_cidr="172.21.0.0/16"))
    await publish(js, scheduled("team-z", "alone", uid="uid-z", generation=2, networks=networks))
    *_, again = await collect(js, "cluster.ips.allocated", lambda events: any(e.data.generation == 2 for e in events))
    assert again.data.vnode_ips == allocated.data.vnode_ips
    assert [c.uid for c in (await KvStore(kv).networks()).clusters.values()] == ["uid-z"]


async def test_a_scheduled_of_an_earlier_version_is_retried_until_the_network_is_claimed(
    js: JetStreamContext, ipmanager: Consumer
) -> None:
    await publish(js, scheduled("team-y", "early"))
    await publish(js, accepted("team-y", "early", "uid-y", pod_cidr="172.20.0.0/16"))
    [allocated] = await collect(js, "cluster.ips.allocated", for_cluster("team-y/early"))
    assert allocated.data.pod_cidr == "172.20.0.0/16"


async def test_overlapping_cidrs_fail_the_cluster_with_a_reason(js: JetStreamContext, ipmanager: Consumer) -> None:
    await publish(
        js,
        accepted("team-a", "first", "uid-a", pod_cidr="172.20.0.0/16"),
        accepted("team-b", "host-clash", "uid-b", pod_cidr="10.244.0.0/16"),
    )
    await collect(js, "cluster.failed", for_cluster("team-b/host-clash"))
    await publish(js, accepted("team-c", "neighbour-clash", "uid-c", pod_cidr="172.20.128.0/17"))
    failures: list[Envelope[Any]] = await collect(js, "cluster.failed", for_cluster("team-c/neighbour-clash"))

    assert {f.cluster_id for f in failures} == {"team-b/host-clash", "team-c/neighbour-clash"}
    host_clash = next(f for f in failures if f.cluster_id == "team-b/host-clash")
    assert (host_clash.data.stage, host_clash.data.reason) == ("ipmanager", "NetworkOverlap")
    assert host_clash.data.message.startswith(
        "spec.kubernetes.podNetworkCidr 10.244.0.0/16 overlaps the host pod CIDR (10.244.0.0/16)"
    )
    neighbour_clash = next(f for f in failures if f.cluster_id == "team-c/neighbour-clash")
    assert "overlaps the pod network of cluster team-a/first (172.20.0.0/16)" in neighbour_clash.data.message


async def test_an_accepted_handled_after_the_delete_chain_claims_nothing_and_fails_nothing(
    js: JetStreamContext, kv: KeyValue, ipmanager: Consumer
) -> None:
    await publish(js, vnodes_deleted("team-z", "late", "uid-z"))
    await collect(js, "cluster.ips.released", for_cluster("team-z/late"))

    await publish(js, accepted("team-z", "late", "uid-z"), scheduled("team-z", "late", uid="uid-z"))

    async def handled() -> bool:
        info: ConsumerInfo = await js.consumer_info(STREAM_NAME, "ipmanager")
        return info.num_pending == 0 and info.num_ack_pending == 0

    async with asyncio.timeout(30):
        while not await handled():
            await asyncio.sleep(0.1)
    table = await KvStore(kv).networks()
    assert table.clusters == {} and set(table.released) == {"uid-z"}
    assert await claims_in(kv) == {}
    stream = await js.stream_info(STREAM_NAME)
    failures = await js.subscribe("cluster.failed", ordered_consumer=True)
    try:
        assert stream.state.messages == 4
        with pytest.raises(nats.errors.TimeoutError):
            await failures.next_msg(timeout=0.5)
    finally:
        await failures.unsubscribe()

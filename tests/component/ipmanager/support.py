"""Builders shared by the ipmanager's component and integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta
from ipaddress import IPv4Address
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from libs.api.models import Vk8sSpec
from libs.events import REGISTRY, Envelope
from libs.events.catalog import AskedNetworks, ClusterAccepted, ClusterScheduled, ClusterVNodesDeleted, VNodePlacement
from services.ipmanager.adapters.kv import KvStore
from services.ipmanager.adapters.metrics import IpManagerMetrics
from services.ipmanager.allocator import Allocator
from services.ipmanager.records import IpClaim
from services.ipmanager.settings import IpManagerSettings
from tests.support.events import NOW, spec_document

BUCKET = "ipmanager-test"


def allocator_for(
    kv: KeyValue, settings: IpManagerSettings | None = None, registry: CollectorRegistry | None = None
) -> Allocator:
    settings = settings or IpManagerSettings()
    return Allocator(
        KvStore(kv),
        layout=settings.network_layout(),
        pool=settings.address_pool(),
        metrics=IpManagerMetrics(registry or CollectorRegistry()),
        tombstone_retention=timedelta(seconds=settings.tombstone_retention_s),
    )


def accepted(
    namespace: str, name: str, uid: str, *, workers: int = 1, pod_cidr: str | None = None, generation: int = 1
) -> Envelope[ClusterAccepted]:
    document = spec_document(workers=workers)
    if pod_cidr:
        document["kubernetes"] = {"podNetworkCidr": pod_cidr}
    payload = ClusterAccepted(
        name=name, namespace=namespace, spec=Vk8sSpec.model_validate(document), uid=uid, generation=generation
    )
    return Envelope.new(payload, cluster_id=f"{namespace}/{name}", now=NOW)


def vnode_names(workers: int) -> list[str]:
    return ["master", *(f"worker-{index}" for index in range(workers))]


def scheduled(
    namespace: str,
    name: str,
    *,
    workers: int = 1,
    generation: int = 1,
    uid: str | None = None,
    networks: AskedNetworks | None = None,
) -> Envelope[ClusterScheduled]:
    """Without `networks`, as the scheduler published it before events carried them."""
    placements = [
        VNodePlacement(vnode=vnode, role="master" if vnode == "master" else "worker", host_node="gpu-node-0", gpus=1)
        for vnode in vnode_names(workers)
    ]
    payload = ClusterScheduled(generation=generation, placements=placements, uid=uid, networks=networks)
    return Envelope.new(payload, cluster_id=f"{namespace}/{name}", now=NOW)


def vnodes_deleted(namespace: str, name: str, uid: str) -> Envelope[ClusterVNodesDeleted]:
    return Envelope.new(ClusterVNodesDeleted(uid=uid), cluster_id=f"{namespace}/{name}", now=NOW)


async def publish(js: JetStreamContext, *events: Envelope[Any]) -> None:
    for event in events:
        await js.publish(event.type, event.to_json(), headers={"Nats-Msg-Id": event.id})


async def collect(
    js: JetStreamContext,
    subject: str,
    done: Callable[[list[Envelope[Any]]], bool],
    *,
    timeout: float = 30.0,
) -> list[Envelope[Any]]:
    """Every event on `subject` from the start of the stream, until `done` holds for them."""
    sub = await js.subscribe(subject, ordered_consumer=True)
    events: list[Envelope[Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while not done(events):
                msg = await sub.next_msg(timeout=timeout)
                events.append(REGISTRY.decode(msg.subject, msg.data))
    finally:
        await sub.unsubscribe()
    return events


async def claims_in(kv: KeyValue) -> dict[IPv4Address, IpClaim]:
    return {address: claim.value for address, claim in (await KvStore(kv).ip_claims()).items()}


def assert_unique(addresses: Sequence[IPv4Address | str]) -> None:
    duplicates = {a for a in addresses if list(addresses).count(a) > 1}
    assert not duplicates, f"given twice: {sorted(map(str, duplicates))}"

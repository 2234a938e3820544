"""The operators' read API over a real KV bucket, served by the runtime's operator server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from typing import Any

import aiohttp
import pytest
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from libs.events import ensure_kv
from libs.runtime import OperatorServer
from services.ipmanager.adapters.http import ReadApi
from services.ipmanager.adapters.kv import KvStore
from services.ipmanager.adapters.metrics import IpManagerMetrics
from services.ipmanager.allocator import Allocator
from services.ipmanager.logic import NetworkRequest
from services.ipmanager.reconciler import Reconciler
from services.ipmanager.records import IpClaim
from services.ipmanager.settings import IpManagerSettings
from tests.component.ipmanager.support import BUCKET

TOKEN = "read-api-token-0123456789"


@dataclass
class Wired:
    base_url: str
    store: KvStore
    allocator: Allocator
    reconciler: Reconciler
    registry: CollectorRegistry


@pytest.fixture
async def wired(js: JetStreamContext) -> AsyncIterator[Wired]:
    settings = IpManagerSettings(vnode_ip_pool="10.250.0.0/24")
    registry = CollectorRegistry()
    metrics = IpManagerMetrics(registry)
    store = KvStore(await ensure_kv(js, BUCKET))
    allocator = Allocator(
        store,
        layout=settings.network_layout(),
        pool=settings.address_pool(),
        metrics=metrics,
        tombstone_retention=timedelta(seconds=settings.tombstone_retention_s),
    )
    reconciler = Reconciler(
        store, None, layout=settings.network_layout(), pool=settings.address_pool(), metrics=metrics,
        grace_s=0, interval_s=60,
    )  # fmt: skip
    server = OperatorServer(registry, "127.0.0.1", 0)
    read_api = ReadApi(server.app)
    server.require_token("/v1/", SecretStr(TOKEN), "VK8S_IPMANAGER_READ_API_TOKEN")
    await server.start()
    read_api.attach(allocator, reconciler)
    yield Wired(f"http://127.0.0.1:{server.port}", store, allocator, reconciler, registry)
    await server.stop()


async def get(url: str, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json()


async def test_the_read_api_answers_only_with_its_bearer_token(wired: Wired) -> None:
    for token in (None, "", "wrong-token", TOKEN[:-1]):
        status, body = await get(f"{wired.base_url}/v1/allocations", token)
        assert (status, body) == (401, {"error": "a bearer token is required (Authorization: Bearer <token>)"})
    assert (await get(f"{wired.base_url}/v1/pools"))[0] == 200
    async with aiohttp.ClientSession() as session, session.get(f"{wired.base_url}/metrics") as response:
        assert response.status == 200, "the operator endpoints stay open"


async def test_without_a_token_configured_the_read_api_refuses_everyone() -> None:
    server = OperatorServer(CollectorRegistry(), "127.0.0.1", 0)
    ReadApi(server.app)
    server.require_token("/v1/", None, "VK8S_IPMANAGER_READ_API_TOKEN")
    await server.start()
    try:
        status, body = await get(f"http://127.0.0.1:{server.port}/v1/allocations")
    finally:
        await server.stop()
    assert (status, body) == (401, {"error": "this API is disabled: VK8S_IPMANAGER_READ_API_TOKEN is not set"})


async def test_allocations_pools_and_orphans(wired: Wired) -> None:
    base, allocator = wired.base_url, wired.allocator
    await allocator.claim_network(uid="u1", cluster_id="team-a/dev", generation=1, request=NetworkRequest())
    _, addresses = await allocator.allocate_vnode_ips("team-a/dev", 1, ["master", "worker-0"])

    status, body = await get(f"{base}/v1/allocations")
    assert status == 200
    [cluster] = body["clusters"]
    assert (cluster["clusterId"], cluster["podCidr"], cluster["serviceCidr"]) == (
        "team-a/dev", "100.64.0.0/16", "10.64.0.0/20",
    )  # fmt: skip
    assert {a["vnode"]: a["address"] for a in cluster["addresses"]} == {v: str(a) for v, a in addresses.items()}

    status, body = await get(f"{base}/v1/allocations/team-a/dev")
    assert status == 200 and body["uid"] == "u1"
    status, body = await get(f"{base}/v1/allocations/team-a/missing")
    assert status == 404 and "team-a/missing" in body["error"]

    status, body = await get(f"{base}/v1/pools")
    pools = {pool["name"]: pool for pool in body["pools"]}
    assert (pools["vnode-ips"]["total"], pools["vnode-ips"]["allocated"], pools["vnode-ips"]["free"]) == (254, 2, 252)
    assert (pools["pod-cidrs"]["allocated"], pools["pod-cidrs"]["free"]) == (1, 63)
    free = wired.registry.get_sample_value("vk8s_ipmanager_pool_addresses", {"pool": "vnode-ips", "state": "free"})
    assert free == 252

    status, body = await get(f"{base}/v1/orphans")
    assert status == 200 and body == {"checkedAt": None, "orphans": []}
    # A claim whose cluster is unknown: without pod information it is not judged an orphan.
    await wired.store.create_ip_claim(
        IPv4Address("10.250.0.200"),
        IpClaim(uid="gone", cluster_id="team-z/gone", vnode="master", claimed_at=datetime.now(UTC)),
    )
    await wired.reconciler.reconcile()
    status, body = await get(f"{base}/v1/orphans")
    assert body["podsChecked"] is False and body["orphans"] == [] and body["claims"] == 3


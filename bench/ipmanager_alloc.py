"""Allocate networks and vNode addresses for N clusters at once, from R allocator replicas sharing one
JetStream KV bucket (real nats-server); print the time taken, the lost compare-and-set races, and
check that no address or CIDR was given twice.

    python bench/ipmanager_alloc.py [-n 100] [--replicas 2] [--vnodes 3] [--pool 10.250.0.0/22] [--nats-url nats://...]

Each cluster is one task: claim its networks, then its vNodes' addresses (what cluster.accepted and
cluster.scheduled do). Raise -n towards the pool size to see probing give way to scans.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import nats
import structlog
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.events import ensure_kv
from services.ipmanager.adapters.kv import KvStore
from services.ipmanager.adapters.metrics import IpManagerMetrics
from services.ipmanager.allocator import Allocator
from services.ipmanager.logic import NetworkRequest
from services.ipmanager.settings import IpManagerSettings
from vk8s.local.nats_server import LocalNatsServer

BUCKET = "ipmanager-bench"


async def provision(allocator: Allocator, index: int, vnodes: list[str]) -> tuple[float, list[IPv4Address]]:
    started = time.perf_counter()
    cluster_id = f"bench-{index % 10}/cluster-{index}"
    await allocator.claim_network(uid=f"uid-{index}", cluster_id=cluster_id, generation=1, request=NetworkRequest())
    _, addresses = await allocator.allocate_vnode_ips(cluster_id, 1, vnodes)
    return time.perf_counter() - started, list(addresses.values())


async def run(url: str, args: argparse.Namespace) -> None:
    # Smaller CIDR blocks than the defaults (/16 pods, /20 services), so that hundreds of clusters fit.
    settings = IpManagerSettings(vnode_ip_pool=IPv4Network(args.pool), pod_cidr_prefix=20, service_cidr_prefix=24)
    clients = [await nats.connect(url) for _ in range(args.replicas)]
    js = clients[0].jetstream()
    for info in await js.streams_info():
        if info.config.name == f"KV_{BUCKET}":
            await js.delete_stream(info.config.name)
    registries = [CollectorRegistry() for _ in clients]
    replicas = [
        Allocator(
            KvStore(await ensure_kv(client.jetstream(), BUCKET)),
            layout=settings.network_layout(),
            pool=settings.address_pool(),
            metrics=IpManagerMetrics(registry),
            tombstone_retention=timedelta(seconds=settings.tombstone_retention_s),
        )
        for client, registry in zip(clients, registries, strict=True)
    ]
    vnodes = ["master", *(f"worker-{i}" for i in range(args.vnodes - 1))]
    started = time.perf_counter()
    results = await asyncio.gather(*(provision(replicas[i % len(replicas)], i, vnodes) for i in range(args.n)))
    elapsed = time.perf_counter() - started

    addresses = [address for _, found in results for address in found]
    networks = (await KvStore(await ensure_kv(js, BUCKET)).networks()).clusters.values()
    ranges = sorted([n.pod_cidr for n in networks] + [n.service_cidr for n in networks], key=str)
    overlapping = sum(1 for i, a in enumerate(ranges) for b in ranges[i + 1 :] if a.overlaps(b))
    latencies = sorted(seconds for seconds, _ in results)

    def lost(key: str) -> int:
        samples = (r.get_sample_value("vk8s_ipmanager_claim_conflicts_total", {"key": key}) for r in registries)
        return int(sum(sample or 0 for sample in samples))

    print(f"clusters: {args.n} x {args.vnodes} vNodes, replicas: {args.replicas}, pool: {args.pool}")
    print(f"total: {elapsed:.2f} s, {args.n / elapsed:.0f} clusters/s, {len(addresses) / elapsed:.0f} addresses/s")
    print(f"per cluster: p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    print(f"lost races: networks {lost('networks')}, cluster index {lost('cluster')}, addresses {lost('ip')}")
    print(f"addresses given twice: {len(addresses) - len(set(addresses))}, overlapping CIDR pairs: {overlapping}")
    for client in clients:
        await client.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100, help="clusters, all at once")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--vnodes", type=int, default=3, help="vNodes per cluster")
    parser.add_argument("--pool", default="10.250.0.0/22", help="the vNode IP pool")
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL"))
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server = None if args.nats_url else LocalNatsServer().start()
    try:
        asyncio.run(run(args.nats_url if server is None else server.url, args))
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()

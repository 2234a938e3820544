"""`python -m services.ipmanager` killed with SIGKILL in the middle of a burst, then restarted:
every cluster ends up with exactly its addresses, none is given twice, no claim is left over."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from libs.events import REGISTRY, Envelope, StreamSettings, ensure_kv, ensure_stream
from services.ipmanager.adapters.kv import KvStore
from tests.component.ipmanager.support import BUCKET, accepted, assert_unique, publish, scheduled, vnode_names
from tests.support.wait import eventually

REPO_ROOT = Path(__file__).resolve().parents[3]
CLUSTERS = 60
WORKERS = 2
KILL_AFTER = 10  # allocations published before the SIGKILL


def uid(index: int) -> str:
    return f"uid-{index:03d}"


def cluster(index: int) -> tuple[str, str]:
    return f"team-{index % 5}", f"cluster-{index}"


@pytest.fixture
def start_ipmanager(nats_url: str, tmp_path: Path) -> Callable[[str], Any]:
    env = {
        **os.environ,
        "VK8S_IPMANAGER_NATS_URL": nats_url,
        "VK8S_IPMANAGER_HTTP_HOST": "127.0.0.1",
        "VK8S_IPMANAGER_HTTP_PORT": "0",
        "VK8S_IPMANAGER_KV_BUCKET": BUCKET,
        "VK8S_IPMANAGER_RECONCILE_PODS": "false",
        "VK8S_IPMANAGER_CONSUMER_CONCURRENCY": "8",
        # A killed consumer's messages come back after ack_wait; keep the test short.
        "VK8S_IPMANAGER_ACK_WAIT_S": "2",
        "VK8S_IPMANAGER_BACKOFF_BASE_S": "0.2",
        "VK8S_IPMANAGER_LOG_FORMAT": "json",
    }

    async def start(run: str) -> asyncio.subprocess.Process:
        log = (tmp_path / f"ipmanager-{run}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.ipmanager", cwd=REPO_ROOT, env=env, stdout=log, stderr=log
        )
        log.close()
        return process

    return start


@pytest.fixture
async def allocations(js: JetStreamContext) -> AsyncIterator[list[Envelope[Any]]]:
    """Every cluster.ips.allocated published, as it comes."""
    await ensure_stream(js, StreamSettings())
    seen: list[Envelope[Any]] = []

    async def record(msg: Any) -> None:
        seen.append(REGISTRY.decode(msg.subject, msg.data))

    sub = await js.subscribe("cluster.ips.allocated", ordered_consumer=True, cb=record)
    yield seen
    await sub.unsubscribe()


async def test_sigkill_mid_burst_loses_nothing_and_doubles_nothing(
    js: JetStreamContext, start_ipmanager: Callable[[str], Any], allocations: list[Envelope[Any]], tmp_path: Path
) -> None:
    first = await start_ipmanager("first")
    await publish(js, *(accepted(*cluster(i), uid(i), workers=WORKERS) for i in range(CLUSTERS)))
    await publish(js, *(scheduled(*cluster(i), workers=WORKERS) for i in range(CLUSTERS)))
    # Polled often: the kill must land while the burst is still going.
    await eventually(lambda: len(allocations) >= KILL_AFTER, f"{KILL_AFTER} allocations before the kill", 60, interval=0.02)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    done_before_kill = {event.cluster_id for event in allocations}
    assert len(done_before_kill) < CLUSTERS, "the burst ended before the kill; nothing was interrupted"

    second = await start_ipmanager("second")
    try:
        await eventually(lambda: len({event.cluster_id for event in allocations}) == CLUSTERS, "every cluster's allocation", 90)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0, (tmp_path / "ipmanager-second.log").read_text()[-3000:]

    published: dict[str, dict[str, str]] = {}
    for event in allocations:
        # A redelivered cluster.scheduled may be answered again, but only ever with the same addresses.
        assert published.setdefault(event.cluster_id, event.data.vnode_ips) == event.data.vnode_ips
    assert all(set(ips) == set(vnode_names(WORKERS)) for ips in published.values())
    addresses = [address for ips in published.values() for address in ips.values()]
    assert len(addresses) == CLUSTERS * (WORKERS + 1)
    assert_unique(addresses)

    store = KvStore(await ensure_kv(js, BUCKET))
    claims = {str(address): claim.value for address, claim in (await store.ip_claims()).items()}
    assert set(claims) == set(addresses), f"leftover claims: {sorted(set(claims) - set(addresses))}"
    for index in range(CLUSTERS):
        cluster_id = "/".join(cluster(index))
        for vnode, address in published[cluster_id].items():
            assert claims[address].owned_by(uid(index), vnode)
        record = await store.cluster_record(uid(index))
        assert record is not None
        assert {v: str(a) for v, a in record.value.vnodes.items()} == published[cluster_id]

    networks = (await store.networks()).clusters.values()
    ranges = [ip_network(n.pod_cidr) for n in networks] + [ip_network(n.service_cidr) for n in networks]
    assert len(ranges) == 2 * CLUSTERS
    assert not [(a, b) for i, a in enumerate(ranges) for b in ranges[i + 1 :] if a.overlaps(b)]

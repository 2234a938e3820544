"""The reconcile against live pods of a real apiserver: an address whose cluster record and vNode pod
are gone is reported by a restarted ipmanager (log, metric, read API), then released after the grace."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.events import StreamSettings, ensure_kv, ensure_stream
from services.ipmanager.adapters.kv import KvStore
from services.ipmanager.adapters.metrics import IpManagerMetrics
from services.ipmanager.adapters.pods import CALICO_IP_ADDRS_ANNOTATION, VNodePods
from services.ipmanager.logic import NetworkRequest
from services.ipmanager.reconciler import Reconciler
from services.ipmanager.settings import IpManagerSettings
from tests.component.ipmanager.support import BUCKET, allocator_for

REPO_ROOT = Path(__file__).resolve().parents[3]
POOL = "10.251.7.0/24"
TOKEN = "ipmanager-read-token"


@pytest.fixture
def selector() -> str:
    """vNode pods of this test only: other tests' pods in the same cluster must not hide an orphan."""
    return f"app=vk8s,vk8s-test={uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(kube_config_path: Path, selector: str) -> IpManagerSettings:
    return IpManagerSettings(
        kv_bucket=BUCKET, vnode_ip_pool=POOL, kubeconfig=str(kube_config_path), vnode_pod_selector=selector
    )


async def create_vnode_pod(
    api: client.ApiClient, namespace: str, name: str, selector: str, address: IPv4Address
) -> None:
    labels = dict(pair.split("=") for pair in selector.split(","))
    body = {
        "metadata": {
            "name": name,
            "labels": {**labels, "vnode": name.removesuffix("-0")},
            "annotations": {CALICO_IP_ADDRS_ANNOTATION: json.dumps([str(address)])},
        },
        "spec": {"containers": [{"name": "node", "image": "ghcr.io/vk8s/kink:v1.29"}]},
    }
    await client.CoreV1Api(api).create_namespaced_pod(namespace, cast(client.V1Pod, body))  # a dict body is sent as it is


async def delete_pod(api: client.ApiClient, namespace: str, name: str) -> None:
    core = client.CoreV1Api(api)
    await core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    async with asyncio.timeout(30):
        while True:
            try:
                await core.read_namespaced_pod(name, namespace)
            except ApiException as error:
                if error.status == 404:
                    return
                raise
            await asyncio.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def restarted_ipmanager(
    nats_url: str, js: JetStreamContext, settings: IpManagerSettings, tmp_path: Path
) -> AsyncIterator[Any]:
    """Starts `python -m services.ipmanager` on demand; yields a getter for its HTTP endpoints."""
    processes: list[asyncio.subprocess.Process] = []
    port = free_port()

    async def start() -> None:
        await ensure_stream(js, StreamSettings())  # as the gateway, its one owner, makes it
        env = {
            **os.environ,
            "VK8S_IPMANAGER_NATS_URL": nats_url,
            "VK8S_IPMANAGER_HTTP_HOST": "127.0.0.1",
            "VK8S_IPMANAGER_HTTP_PORT": str(port),
            "VK8S_IPMANAGER_KV_BUCKET": settings.kv_bucket,
            "VK8S_IPMANAGER_VNODE_IP_POOL": str(settings.vnode_ip_pool),
            "VK8S_IPMANAGER_KUBECONFIG": str(settings.kubeconfig),
            "VK8S_IPMANAGER_VNODE_POD_SELECTOR": settings.vnode_pod_selector,
            "VK8S_IPMANAGER_LOG_FORMAT": "json",
            "VK8S_IPMANAGER_READ_API_TOKEN": TOKEN,
        }
        log = (tmp_path / "ipmanager.log").open("wb")
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.ipmanager", cwd=REPO_ROOT, env=env, stdout=log, stderr=log
            )
        )
        log.close()

    async def get(path: str) -> tuple[int, str]:
        def fetch() -> tuple[int, str]:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()
            except OSError:
                return 0, ""

        return await asyncio.to_thread(fetch)

    yield start, get
    for process in processes:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)


async def test_a_restarted_ipmanager_reports_an_orphan_and_releases_it_after_the_grace(
    js: JetStreamContext,
    kube_api: client.ApiClient,
    namespace: str,
    selector: str,
    settings: IpManagerSettings,
    restarted_ipmanager: Any,
    tmp_path: Path,
) -> None:
    start, get = restarted_ipmanager
    kv = await ensure_kv(js, BUCKET)
    store, allocator = KvStore(kv), allocator_for(kv, settings)
    for uid, name in (("uid-gone", "gone"), ("uid-live", "live")):
        await allocator.claim_network(
            uid=uid, cluster_id=f"{namespace}/{name}", generation=1, request=NetworkRequest()
        )
    _, gone = await allocator.allocate_vnode_ips(f"{namespace}/gone", 1, ["master"])
    _, live = await allocator.allocate_vnode_ips(f"{namespace}/live", 1, ["master"])
    await create_vnode_pod(kube_api, namespace, "gone-master-0", selector, gone["master"])
    await create_vnode_pod(kube_api, namespace, "live-master-0", selector, live["master"])

    # Both clusters lose their record (a deletion that never reached the ipmanager); only one pod goes.
    await delete_pod(kube_api, namespace, "gone-master-0")
    for uid in ("uid-gone", "uid-live"):
        table = await store.network_table()
        assert table is not None
        await store.put_network_table(table.value.without(uid), table.revision)
        await store.delete_cluster_record(uid)

    await start()
    async with asyncio.timeout(60):
        while (reply := await get("/v1/orphans"))[0] != 200 or json.loads(reply[1])["checkedAt"] is None:
            await asyncio.sleep(0.2)
    report = json.loads(reply[1])
    assert report["podsChecked"] is True
    assert [(o["address"], o["reason"], o["clusterId"], o["vnode"], o["due"]) for o in report["orphans"]] == [
        (str(gone["master"]), "ClusterGone", f"{namespace}/gone", "master", False)
    ], (tmp_path / "ipmanager.log").read_text()[-3000:]
    _, metrics = await get("/metrics")
    assert 'vk8s_ipmanager_orphans{reason="ClusterGone"} 1.0' in metrics
    log = [json.loads(line) for line in (tmp_path / "ipmanager.log").read_text().splitlines() if line.startswith("{")]
    assert any(line["event"] == "Found orphaned address" and line["address"] == str(gone["master"]) for line in log)

    # Past the grace period the orphan is released; the address a live pod holds is kept.
    reconciler = Reconciler(
        store, VNodePods(kube_api, selector), layout=settings.network_layout(), pool=settings.address_pool(),
        metrics=IpManagerMetrics(CollectorRegistry()), grace_s=0, interval_s=60,
    )  # fmt: skip
    released = await reconciler.reconcile()
    assert released.released == (gone["master"],)
    assert set(await store.ip_claims()) == {live["master"]}


"""Chaos on the whole product (kwok tier, every service its own process under its keeper): while
clusters provision, each service is SIGKILLed once (its keeper starts it again), some clusters are
deleted at different stages and one is paused, resumed, paused and resumed quickly; then every
event of the surviving clusters is delivered a second time, as after the duplicate window. The
final state is asserted, not just the absence of errors: the clusters asked for run, the deleted
ones left nothing, no StatefulSet exists twice, no address, network or GPU is given twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from pathlib import Path

import nats
import pytest
from kubernetes.aio import client

from services.topology import SERVICES
from tests.e2e.conftest import eventually, phase_of, run, vk8s_object
from tests.e2e.test_lifecycle import all_gone, assert_no_allocation, http_json, manifest, statefulsets
from vk8s.local import stack

GPU = "nvidia.com/gpu"
PAUSED = "vk8s-resource-stopped"
KEPT = ("c-keep-0", "c-keep-1", "c-keep-2", "c-toggle")
DELETED_AT_ONCE, DELETED_LATER = "c-del-early", "c-del-late"

pytestmark = pytest.mark.timeout(900)


def service_process(keeper_pid: int) -> int:
    """The service process its keeper runs now."""
    children = Path(f"/proc/{keeper_pid}/task/{keeper_pid}/children").read_text().split()
    assert len(children) == 1, f"keeper {keeper_pid} runs {children}"
    return int(children[0])


async def kill_every_service_once(info: stack.StackInfo, pause_s: float) -> list[str]:
    killed = []
    for name, keeper in info.service_pids.items():
        os.kill(service_process(keeper), signal.SIGKILL)
        killed.append(name)
        await asyncio.sleep(pause_s)
    return killed


async def annotate(product_env: dict[str, str], namespace: str, name: str, paused: bool) -> None:
    change = f"{PAUSED}=true" if paused else f"{PAUSED}-"
    result = run(["kubectl", "annotate", "vk8s", name, "-n", namespace, change], product_env)
    assert result.returncode == 0, result.stderr


async def deliver_again(info: stack.StackInfo, cluster_ids: set[str]) -> Counter[str]:
    """Every event about these clusters stored once more under a new id: what a redelivery after
    the duplicate window does (the broker no longer knows the first). Each is published as a stage
    that emits it would: no NATS user may publish every event."""
    emitter = {subject: topology.service for topology in reversed(SERVICES) for subject in topology.emits}
    clients = {
        name: await nats.connect(info.nats_url, user=name, password=password)
        for name, password in info.service_nats_passwords.items()
    }
    js = clients["projector"].jetstream()
    delivered: Counter[str] = Counter()
    try:
        last = (await js.stream_info("VK8S")).state.last_seq
        sub = await js.subscribe("cluster.>", ordered_consumer=True)
        batch = []
        while True:
            msg = await sub.next_msg(timeout=10)
            if json.loads(msg.data).get("clusterId") in cluster_ids:
                batch.append(msg)
            if msg.metadata.sequence.stream >= last:
                break
        await sub.unsubscribe()
        for msg in batch:
            headers = {"Nats-Msg-Id": f"{(msg.headers or {}).get('Nats-Msg-Id')}-again"}
            await clients[emitter[msg.subject]].jetstream().publish(msg.subject, msg.data, headers=headers)
            delivered[msg.subject] += 1
    finally:
        for nc in clients.values():
            await nc.drain()
    return delivered


async def gpus_by_host(api: client.ApiClient) -> tuple[dict[str, int], dict[str, int]]:
    """GPUs requested by the pods bound to each node, and each node's capacity."""
    core = client.CoreV1Api(api)
    capacity = {n.metadata.name: int((n.status.capacity or {}).get(GPU, 0)) for n in (await core.list_node()).items}
    used: Counter[str] = Counter()
    for pod in (await core.list_pod_for_all_namespaces()).items:
        if pod.spec.node_name and pod.status.phase not in ("Succeeded", "Failed"):
            used[pod.spec.node_name] += sum(int((c.resources.requests or {}).get(GPU, 0)) for c in pod.spec.containers)
    return dict(used), capacity


async def test_chaos_every_cluster_ends_as_asked_and_nothing_is_given_twice(
    api: client.ApiClient, namespace: str, product_env: dict[str, str], product: tuple[stack.StackLayout, stack.StackInfo]
) -> None:
    _, info = product
    for name in (*KEPT, DELETED_AT_ONCE, DELETED_LATER):
        applied = run(["kubectl", "apply", "-f", "-"], product_env, stdin=manifest(name, namespace, kubeflow=False))
        assert applied.returncode == 0, applied.stderr
    assert run(["kubectl", "delete", "vk8s", DELETED_AT_ONCE, "-n", namespace, "--wait=false"], product_env).returncode == 0

    killed = await kill_every_service_once(info, pause_s=3)
    assert run(["kubectl", "delete", "vk8s", DELETED_LATER, "-n", namespace, "--wait=false"], product_env).returncode == 0

    async def all_running() -> bool:
        return all([await phase_of(api, namespace, name) == "Running" for name in KEPT])

    await eventually(all_running, f"{', '.join(KEPT)} Running", timeout=480, interval=3)
    for paused in (True, False, True, False):
        await annotate(product_env, namespace, "c-toggle", paused)
    delivered = await deliver_again(info, {f"{namespace}/{name}" for name in KEPT})

    async def settled() -> bool:
        phases = [await phase_of(api, namespace, name) for name in KEPT]
        gone = [await vk8s_object(api, namespace, name) is None for name in (DELETED_AT_ONCE, DELETED_LATER)]
        sets = await statefulsets(api, namespace, "c-toggle")
        return phases == ["Running"] * len(KEPT) and all(gone) and [s.spec.replicas for s in sets] == [1]

    await eventually(settled, "the kept clusters Running (c-toggle resumed) and the deleted ones gone", timeout=300, interval=3)

    assert sorted(killed) == sorted(stack.NAMES)
    assert {"cluster.accepted", "cluster.scheduled", "cluster.ips.allocated", "cluster.vnodes.ready"} <= set(delivered)
    for name in KEPT:
        assert len(await statefulsets(api, namespace, name)) == 1, name
    for name in (DELETED_AT_ONCE, DELETED_LATER):
        assert await statefulsets(api, namespace, name) == []
        await all_gone(api, namespace, name)
        assert_no_allocation(info, namespace, name)
    every = http_json(info, "ipmanager", "/v1/allocations")["clusters"]
    ours = [a["clusterId"].split("/")[1] for a in every if a["clusterId"].startswith(f"{namespace}/")]
    assert sorted(ours) == sorted(KEPT)
    addresses = [address["address"] for a in every for address in a["addresses"]]
    assert len(addresses) == len(set(addresses)), "an address given twice"
    for key in ("podCidr", "serviceCidr"):
        assert len({a[key] for a in every}) == len(every), f"a {key} given twice"
    used, capacity = await gpus_by_host(api)
    assert all(used[host] <= capacity.get(host, 0) for host in used), (used, capacity)

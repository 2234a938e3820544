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
import random
import signal
from collections import Counter
from pathlib import Path

import pytest
from kubernetes.aio import client
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, NoKeysError

from libs.kube import GROUP, PLURAL, VERSION, name_of
from libs.kube.vnodes import COMPONENT_LABEL, PLACEHOLDER_COMPONENT, TENANT_NAMESPACE_LABEL, platform_namespace
from services.topology import NAMES, SERVICES
from tests.e2e.conftest import eventually, phase_of, run, vk8s_object
from tests.e2e.test_lifecycle import all_gone, assert_no_allocation, http_json, manifest, statefulsets
from tests.support.apiserver_faults import FAULTS, ApiserverFaultProxy
from tests.support.nats import connect_as_service
from vk8s.local import stack
from vk8s.local.keeper import RESTART_EVENT

GPU = "nvidia.com/gpu"
PAUSED = "vk8s-resource-stopped"
KEPT = ("c-keep-0", "c-keep-1", "c-keep-2", "c-toggle")
DELETED_AT_ONCE, DELETED_LATER = "c-del-early", "c-del-late"

pytestmark = pytest.mark.timeout(900)


def service_processes(keeper_pid: int) -> list[int]:
    """The service process its keeper runs now: none while it waits to start it again."""
    children = [int(pid) for pid in Path(f"/proc/{keeper_pid}/task/{keeper_pid}/children").read_text().split()]
    assert len(children) <= 1, f"keeper {keeper_pid} runs {children}"
    return children


def service_process(keeper_pid: int) -> int:
    (pid,) = service_processes(keeper_pid)
    return pid


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
        name: await connect_as_service(info, name) for name in info.service_nats_passwords
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
    capacity = {name_of(n): int((n.status.capacity or {}).get(GPU, 0)) for n in (await core.list_node()).items}
    used: Counter[str] = Counter()
    for pod in (await core.list_pod_for_all_namespaces()).items:
        spec, status = pod.spec, pod.status
        if spec is None or status is None or not spec.node_name or status.phase in ("Succeeded", "Failed"):
            continue
        gpus = [int((c.resources.requests or {}).get(GPU, 0)) for c in spec.containers]
        used[spec.node_name] += sum(gpus)
    return dict(used), capacity


async def apply_clusters(
    api: client.ApiClient,
    env: dict[str, str],
    namespace: str,
    names: tuple[str, ...],
    to_delete: tuple[str, ...],
    with_kubeflow: tuple[str, ...] = (),
) -> dict[str, str]:
    """Applies one-vNode clusters (Kubeflow only for those `with_kubeflow`); the uids of those
    `to_delete`, by name."""
    for name in names:
        applied = run(["kubectl", "apply", "-f", "-"], env, stdin=manifest(name, namespace, kubeflow=name in with_kubeflow))
        assert applied.returncode == 0, applied.stderr
    return {name: (await vk8s_object(api, namespace, name) or {})["metadata"]["uid"] for name in to_delete}


async def delete_cluster(env: dict[str, str], namespace: str, name: str) -> None:
    assert run(["kubectl", "delete", "vk8s", name, "-n", namespace, "--wait=false"], env).returncode == 0


# Each stage's bucket, read as that stage. Not the projector's read model: it keeps a deleted
# cluster's record, by which its fold tells a late event of the old object from a new object's.
BUCKETS = {"gateway": "vk8s-gateway", "scheduler": "vk8s-scheduler", "ipmanager": "vk8s-ipmanager", "vnode": "vk8s-vnode"}


async def kv_leftovers(info: stack.StackInfo, namespace: str, deleted: dict[str, str]) -> list[str]:
    """Every KV entry that still names a deleted cluster (by uid, `<ns>/<name>` or `<ns>.<name>`),
    but the released networks' tombstones, which ipmanager keeps on purpose."""
    marks = {mark for name, uid in deleted.items() for mark in (uid, f"{namespace}/{name}", f"{namespace}.{name}")}
    left = []
    for service, bucket in BUCKETS.items():
        nc = await connect_as_service(info, service)
        try:
            kv = await nc.jetstream().key_value(bucket)
            try:
                keys = await kv.keys()
            except NoKeysError:
                keys = []
            for key in keys:
                try:
                    value = (await kv.get(key)).value or b""
                except KeyNotFoundError:  # deleted since listed
                    continue
                if service == "ipmanager" and key == "networks":
                    value = json.dumps(json.loads(value).get("claims")).encode()
                if any(mark in key or mark.encode() in value for mark in marks):
                    left.append(f"{bucket}/{key}")
        finally:
            await nc.drain()
    return left


async def assert_ended_as_asked(
    api: client.ApiClient, info: stack.StackInfo, namespace: str, kept: tuple[str, ...], deleted: dict[str, str]
) -> None:
    """One StatefulSet per kept cluster; nothing of the deleted ones (StatefulSets, claims,
    addresses, KV entries); no address, network or GPU given twice across the whole stack."""
    for name in kept:
        assert len(await statefulsets(api, namespace, name)) == 1, name

    async def no_placeholder() -> bool:
        # The vNode pods run: no booking is held by a placeholder any more (a Terminating one still counts).
        selector = f"{COMPONENT_LABEL}={PLACEHOLDER_COMPONENT},{TENANT_NAMESPACE_LABEL}={namespace}"
        return not (await client.CoreV1Api(api).list_pod_for_all_namespaces(label_selector=selector)).items

    await eventually(no_placeholder, "no placeholder pod left", timeout=60)
    for name in deleted:
        assert await statefulsets(api, namespace, name) == []
        await all_gone(api, namespace, name)
        assert_no_allocation(info, namespace, name)
    assert await kv_leftovers(info, namespace, deleted) == []
    every = http_json(info, "ipmanager", "/v1/allocations")["clusters"]
    ours = [a["clusterId"].split("/")[1] for a in every if a["clusterId"].startswith(f"{namespace}/")]
    assert sorted(ours) == sorted(kept)
    addresses = [address["address"] for a in every for address in a["addresses"]]
    assert len(addresses) == len(set(addresses)), "an address given twice"
    for key in ("podCidr", "serviceCidr"):
        assert len({a[key] for a in every}) == len(every), f"a {key} given twice"
    used, capacity = await gpus_by_host(api)
    assert all(used[host] <= capacity.get(host, 0) for host in used), (used, capacity)


async def test_chaos_every_cluster_ends_as_asked_and_nothing_is_given_twice(
    api: client.ApiClient, namespace: str, product_env: dict[str, str], product: tuple[stack.StackLayout, stack.StackInfo]
) -> None:
    _, info = product
    deleted = await apply_clusters(api, product_env, namespace, (*KEPT, DELETED_AT_ONCE, DELETED_LATER), (DELETED_AT_ONCE, DELETED_LATER))
    await delete_cluster(product_env, namespace, DELETED_AT_ONCE)

    killed = await kill_every_service_once(info, pause_s=3)
    await delete_cluster(product_env, namespace, DELETED_LATER)

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

    assert sorted(killed) == sorted(NAMES)
    assert {"cluster.accepted", "cluster.scheduled", "cluster.ips.allocated", "cluster.vnodes.ready"} <= set(delivered)
    await assert_ended_as_asked(api, info, namespace, KEPT, deleted)


async def test_nats_restart_mid_pipeline_every_cluster_ends_as_asked(
    api: client.ApiClient, namespace: str, product_env: dict[str, str], product: tuple[stack.StackLayout, stack.StackInfo]
) -> None:
    """nats-server stops for a few seconds while clusters provision and one is deleted, then comes
    back on its port with its JetStream store: the services reconnect and every stage finishes."""
    layout, info = product
    kept = ("n-keep-0", "n-keep-1", "n-keep-2", "n-keep-3")
    deleted = await apply_clusters(api, product_env, namespace, (*kept, "n-del"), ("n-del",))

    async def provisioning() -> bool:
        return any([await phase_of(api, namespace, name) not in (None, "Pending") for name in kept])

    await eventually(provisioning, "a cluster past Pending", timeout=120, interval=0.5)
    await delete_cluster(product_env, namespace, "n-del")
    info = await asyncio.to_thread(stack.restart_nats, layout, 5.0)

    async def settled() -> bool:
        phases = [await phase_of(api, namespace, name) for name in kept]
        return phases == ["Running"] * len(kept) and await vk8s_object(api, namespace, "n-del") is None

    await eventually(settled, "the kept clusters Running and n-del gone", timeout=480, interval=3)
    await assert_ended_as_asked(api, info, namespace, kept, deleted)


async def test_apiserver_faults_every_cluster_ends_as_asked(
    api: client.ApiClient,
    namespace: str,
    product_env: dict[str, str],
    product: tuple[stack.StackLayout, stack.StackInfo],
    apiserver_faults: ApiserverFaultProxy,
) -> None:
    """For 25 s the services' apiserver answers 429 and 500, resets connections and answers slowly
    (tests.support.apiserver_faults) while clusters provision and one is deleted."""
    layout, info = product
    kept = ("f-keep-0", "f-keep-1", "f-keep-2", "f-keep-3")
    deleted = await apply_clusters(api, product_env, namespace, (*kept, "f-del"), ("f-del",))
    restarts_before = service_restarts(layout)
    apiserver_faults.inject(25)
    await asyncio.sleep(5)
    await delete_cluster(product_env, namespace, "f-del")
    await asyncio.sleep(20)
    assert set(FAULTS) <= set(apiserver_faults.injected), apiserver_faults.injected

    async def settled() -> bool:
        phases = [await phase_of(api, namespace, name) for name in kept]
        return phases == ["Running"] * len(kept) and await vk8s_object(api, namespace, "f-del") is None

    await eventually(settled, "the kept clusters Running and f-del gone", timeout=480, interval=3)
    await assert_ended_as_asked(api, info, namespace, kept, deleted)
    # The faults are answered by retries, not by crashes the keepers hide.
    assert service_restarts(layout) == restarts_before, "a service exited under the apiserver's faults"


def service_restarts(layout: stack.StackLayout) -> Counter[str]:
    """How many times each service's keeper started it again, from the services' logs."""
    return Counter({name: (layout.logs / f"{name}.log").read_text(errors="replace").count(RESTART_EVENT) for name in NAMES})


# Each cluster is deleted as soon as this event of it is in the stream: once per stage.
DELETED_AT_STAGE = {
    "d-accepted": "cluster.accepted",
    "d-scheduled": "cluster.scheduled",
    "d-ips": "cluster.ips.allocated",
    "d-vnodes": "cluster.vnodes.ready",
    "d-bootstrap": "cluster.vnode.setup",
    "d-kubeflow": "cluster.kubeflow.progress",
}


async def delete_at_stages(
    api: client.ApiClient, info: stack.StackInfo, namespace: str, started: asyncio.Event
) -> dict[str, str]:
    """Deletes each cluster of DELETED_AT_STAGE when its stage's event is stored (read as the
    projector, from the stream's end on); returns, by name, the event that triggered it."""
    nc = await connect_as_service(info, "projector")
    triggered: dict[str, str] = {}
    try:
        sub = await nc.jetstream().subscribe("cluster.>", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        started.set()
        while len(triggered) < len(DELETED_AT_STAGE):
            msg = await sub.next_msg(timeout=300)
            name = str(json.loads(msg.data).get("clusterId", "")).removeprefix(f"{namespace}/")
            if DELETED_AT_STAGE.get(name) == msg.subject and name not in triggered:
                await client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
                triggered[name] = msg.subject
    finally:
        await nc.drain()
    return triggered


async def test_delete_during_each_stage_and_grow_gpus_in_place(
    api: client.ApiClient, namespace: str, product_env: dict[str, str], product: tuple[stack.StackLayout, stack.StackInfo]
) -> None:
    """A cluster deleted right after each stage's event leaves nothing behind; meanwhile a running
    cluster's vNode grows from 1 to 3 GPUs in place and runs with them."""
    _, info = product
    await apply_clusters(api, product_env, namespace, ("g-grow",), ())

    async def grow_running() -> bool:
        return await phase_of(api, namespace, "g-grow") == "Running"

    await eventually(grow_running, "g-grow Running", timeout=300, interval=2)

    started = asyncio.Event()
    deleting = asyncio.create_task(delete_at_stages(api, info, namespace, started))
    await asyncio.wait_for(started.wait(), 30)
    names = tuple(DELETED_AT_STAGE)
    with_kubeflow = ("d-kubeflow",)
    deleted = await apply_clusters(api, product_env, namespace, names, names, with_kubeflow)
    grow = [
        {"op": "replace", "path": f"/spec/nodes/0/resources/{part}/nvidia.com~1gpu", "value": 3} for part in ("requests", "limits")
    ]
    patched = run(["kubectl", "patch", "vk8s", "g-grow", "-n", namespace, "--type", "json", "-p", json.dumps(grow)], product_env)
    assert patched.returncode == 0, patched.stderr
    assert await asyncio.wait_for(deleting, 420) == DELETED_AT_STAGE

    async def settled() -> bool:
        gone = [await vk8s_object(api, namespace, name) is None for name in names]
        vnodes = platform_namespace(namespace, "g-grow")
        pods = (await client.CoreV1Api(api).list_namespaced_pod(vnodes, label_selector="clusterName=g-grow")).items
        grown = [p for p in pods if p.status.phase == "Running" and p.spec.containers[0].resources.requests.get(GPU) == "3"]
        return all(gone) and len(pods) == len(grown) == 1 and await phase_of(api, namespace, "g-grow") == "Running"

    await eventually(settled, "the deleted clusters gone and g-grow Running on 3 GPUs", timeout=300, interval=3)
    await assert_ended_as_asked(api, info, namespace, ("g-grow",), deleted)


RANDOM_KEPT = tuple(f"r-keep-{i:02}" for i in range(15))
RANDOM_DELETED = tuple(f"r-del-{i}" for i in range(5))


async def test_random_kills_while_twenty_clusters_provision_and_five_are_deleted(
    api: client.ApiClient, namespace: str, product_env: dict[str, str], product: tuple[stack.StackLayout, stack.StackInfo]
) -> None:
    """For 60 s a random service is SIGKILLed every 4 s (its keeper starts it again) while 20
    clusters provision and 5 of them are deleted, one every 10 s."""
    _, info = product
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    deleted = await apply_clusters(api, product_env, namespace, (*RANDOM_KEPT, *RANDOM_DELETED), RANDOM_DELETED)

    async def delete_one_by_one() -> None:
        for name in RANDOM_DELETED:
            await asyncio.sleep(10)
            await delete_cluster(product_env, namespace, name)

    deleting = asyncio.create_task(delete_one_by_one())
    killed: list[str] = []
    for _ in range(15):
        name = rng.choice(NAMES)
        # None while its keeper waits to start it again.
        for pid in service_processes(info.service_pids[name]):
            os.kill(pid, signal.SIGKILL)
            killed.append(name)
        await asyncio.sleep(4)
    await deleting

    async def settled() -> bool:
        phases = [await phase_of(api, namespace, name) for name in RANDOM_KEPT]
        gone = [await vk8s_object(api, namespace, name) is None for name in RANDOM_DELETED]
        return phases == ["Running"] * len(RANDOM_KEPT) and all(gone)

    await eventually(settled, f"15 clusters Running and 5 gone (kill seed {seed}, killed {killed})", timeout=480, interval=3)
    assert len(killed) >= 10, killed
    await assert_ended_as_asked(api, info, namespace, RANDOM_KEPT, deleted)

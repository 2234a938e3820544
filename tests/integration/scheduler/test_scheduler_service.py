"""The scheduler service in-process against a real API server (simulated GPU nodes) and real NATS."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

import aiohttp
import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from libs.api.models import Vk8sSpec
from libs.events import REGISTRY, Envelope, Publisher
from libs.events.catalog import (
    ClusterAccepted,
    ClusterDeleted,
    ClusterIPsReleased,
    ClusterScheduled,
    ClusterUnschedulable,
    ClusterUpdated,
)
from libs.kube import GROUP, KIND, PLURAL, VERSION
from libs.kube.vnodes import (
    APP,
    APP_LABEL,
    CLUSTER_LABEL,
    CLUSTER_UID_LABEL,
    TENANT_NAMESPACE_LABEL,
    VNODE_LABEL,
    placeholder_name,
    platform_namespace,
    pod_name,
    statefulset_name,
)
from libs.runtime import Service
from services.scheduler.__main__ import wired
from services.scheduler.settings import SchedulerSettings
from tests.support.platform import make_platform_namespace
from tests.support.services import local_settings, running
from tests.support.wait import eventually
from vk8s.testbed.config import FAKE_NODE_ANNOTATION, GPU_PRODUCT_LABEL, GPU_RESOURCE, ZONE_LABEL
from vk8s.testbed.fixtures import delete_namespace

POOL_LABEL = "vk8s.skt.co.kr/test-pool"


@dataclass(frozen=True)
class Pool:
    """Simulated GPU nodes of one test: the scheduler under test selects them by label, and their
    taint keeps every other pod of the shared testbed off them."""

    id: str
    nodes: tuple[str, ...]

    @property
    def toleration(self) -> dict[str, str]:
        return {"key": POOL_LABEL, "operator": "Exists"}


def node_manifest(name: str, pool: str, gpus: int) -> dict[str, Any]:
    key, value = FAKE_NODE_ANNOTATION
    capacity = {"cpu": "96", "memory": "1Ti", "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "metadata": {
            "name": name,
            "labels": {POOL_LABEL: pool, GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB", ZONE_LABEL: "zone-a"},
            "annotations": {key: value},
        },
        "spec": {"taints": [{"key": POOL_LABEL, "value": pool, "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@pytest.fixture
async def pool(kube_api: client.ApiClient) -> AsyncIterator[Pool]:
    core = client.CoreV1Api(kube_api)
    pool_id = uuid.uuid4().hex[:8]
    names = (f"sched-{pool_id}-0",)
    for name in names:
        await core.create_node(node_manifest(name, pool_id, gpus=8))

    async def ready() -> bool:
        for name in names:
            node = await core.read_node(name)
            conditions = {c.type: c.status for c in (node.status.conditions or ())}
            # Only our own taint: the node lifecycle controller's not-ready taint is gone.
            if conditions.get("Ready") != "True" or [t.key for t in node.spec.taints or ()] != [POOL_LABEL]:
                return False
        return True

    try:
        try:
            await eventually(ready, "the pool's nodes to turn Ready", timeout=60)
        except AssertionError:
            pytest.skip("no kwok turns created nodes Ready here (only the local testbed has it)")
        yield Pool(pool_id, names)
    finally:
        for name in names:
            with contextlib.suppress(ApiException):
                await core.delete_node(name)


@contextlib.asynccontextmanager
async def running_scheduler(nats_url: str, kubeconfig: Path, pool: Pool) -> AsyncIterator[Service]:
    settings = local_settings(
        SchedulerSettings,
        nats_url,
        kubeconfig,
        node_selector=f"{POOL_LABEL}={pool.id}",
        retry_debounce_s=0.1,
        backoff_base_s=0.2,
        backoff_max_s=1.0,
    )
    async with running(wired(settings)) as service:
        yield service


class Recorder:
    """Every event on the stream, decoded, in order."""

    def __init__(self, js: JetStreamContext):
        self._js = js
        self.events: list[Envelope[Any]] = []

    async def start(self) -> None:
        async def received(msg: Any) -> None:
            self.events.append(REGISTRY.decode(msg.subject, msg.data))

        await self._js.subscribe("cluster.>", cb=received, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)

    def of(self, subject: str, cluster_id: str) -> list[Envelope[Any]]:
        return [e for e in self.events if e.type == subject and e.cluster_id == cluster_id]

    async def next(self, subject: str, cluster_id: str, *, after: int = 0, timeout: float = 30.0) -> Envelope[Any]:
        events = await eventually(
            lambda: self.of(subject, cluster_id)[after:], f"{subject} for {cluster_id}", timeout=timeout
        )
        return events[0]


class Scheduling(NamedTuple):
    service: Service
    recorder: Recorder
    publisher: Publisher
    core: client.CoreV1Api
    apps: client.AppsV1Api
    node: str


@pytest.fixture
async def scheduling(
    nats_url: str, js: JetStreamContext, kube_api: client.ApiClient, kube_config_path: Path, pool: Pool
) -> AsyncIterator[Scheduling]:
    """A scheduler for the pool (its one node), the stream's events, the API."""
    async with running_scheduler(nats_url, kube_config_path, pool) as service:
        recorder, publisher = await recording(js)
        core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
        yield Scheduling(service, recorder, publisher, core, apps, pool.nodes[0])


Platforms = Callable[[str, str, int, Pool], Awaitable[tuple[Envelope[ClusterAccepted], str]]]


@pytest.fixture
async def platforms(kube_api: client.ApiClient) -> AsyncIterator[Platforms]:
    """A cluster as the gateway accepts it: its Vk8s object (the scheduler places only what one asks
    for), its platform namespace, and the cluster.accepted of that object's uid; namespaces deleted after."""
    made: list[str] = []

    async def make(namespace: str, name: str, gpus: int, pool: Pool) -> tuple[Envelope[ClusterAccepted], str]:
        spec = cluster(namespace, name, gpus, pool).data.spec
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name},
            "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        created = cast(dict[str, Any], await client.CustomObjectsApi(kube_api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))
        accepted = cluster(namespace, name, gpus, pool, uid=created["metadata"]["uid"])
        metadata = {"namespace": namespace, "name": name, "uid": accepted.data.uid}
        made.append(await make_platform_namespace(kube_api, {"metadata": metadata}))
        return accepted, made[-1]

    yield make
    for name in made:
        await delete_namespace(kube_api, name)


async def recording(js: JetStreamContext) -> tuple[Recorder, Publisher]:
    recorder = Recorder(js)
    await recorder.start()
    return recorder, Publisher(js)


async def placed(
    recorder: Recorder, publisher: Publisher, accepted: Envelope[ClusterAccepted]
) -> Envelope[ClusterAccepted]:
    """Publishes the cluster and waits for the scheduler to place it."""
    await publisher.publish(accepted)
    await recorder.next(ClusterScheduled.subject, accepted.cluster_id)
    return accepted


def cluster(namespace: str, name: str, gpus: int, pool: Pool, *, uid: str | None = None) -> Envelope[ClusterAccepted]:
    def node(vnode: str, role: str, resources: dict[str, str]) -> dict[str, Any]:
        return {
            "name": vnode,
            "role": role,
            "image": "ghcr.io/vk8s/kink:v1.29",
            "resources": {"requests": resources, "limits": resources},
            "tolerations": [pool.toleration],
        }

    spec = Vk8sSpec.model_validate(
        {
            "nodes": [
                node("master", "master", {"cpu": "2", "memory": "4Gi"}),
                node("worker-0", "worker", {"cpu": "8", "memory": "32Gi", GPU_RESOURCE: str(gpus)}),
            ]
        }
    )
    data = ClusterAccepted(name=name, namespace=namespace, spec=spec, uid=uid or str(uuid.uuid4()), generation=1)
    return Envelope.new(data, cluster_id=f"{namespace}/{name}", now=datetime.now(UTC))


async def scrape(service: Service) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{service.http.port}/metrics") as response:
        return await response.text()


async def gpus_of(service: Service, node: str, state: str = "in_use") -> float | None:
    for line in (await scrape(service)).splitlines():
        if line.startswith("vk8s_scheduler_gpus{") and f'node="{node}"' in line and f'state="{state}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def vnode_statefulset(accepted: Envelope[ClusterAccepted], vnode: str, gpus: int, pool: Pool) -> dict[str, Any]:
    """What the vnode stage makes for one vNode (names and labels of libs.kube.vnodes), pinned to
    the pool's node; the StatefulSet controller makes its pod."""
    name = accepted.data.name
    labels = {
        APP_LABEL: APP,
        CLUSTER_LABEL: name,
        VNODE_LABEL: vnode,
        CLUSTER_UID_LABEL: accepted.data.uid,
        TENANT_NAMESPACE_LABEL: accepted.data.namespace,
    }
    resources = {"cpu": "8", "memory": "32Gi", GPU_RESOURCE: str(gpus)}
    return {
        "metadata": {"name": statefulset_name(name, vnode), "labels": labels},
        "spec": {
            "replicas": 1,
            "serviceName": f"{name}-vnodes",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeName": pool.nodes[0],
                    "tolerations": [pool.toleration],
                    "containers": [
                        {
                            "name": "vnode",
                            "image": "registry.invalid/kink:1",
                            "resources": {"requests": resources, "limits": resources},
                        }
                    ],
                },
            },
        },
    }


async def test_two_clusters_race_for_the_last_gpus_and_the_loser_is_placed_once_the_winner_is_deleted(
    nats_url: str, js: JetStreamContext, kube_config_path: Path, namespace: str, pool: Pool, platforms: Platforms
) -> None:
    # Two replicas share the ledger, as two scheduler pods would.
    async with (
        running_scheduler(nats_url, kube_config_path, pool) as first,
        running_scheduler(nats_url, kube_config_path, pool),
    ):
        recorder, publisher = await recording(js)
        a, _ = await platforms(namespace, "alpha", 8, pool)
        b, _ = await platforms(namespace, "beta", 8, pool)

        await asyncio.gather(publisher.publish(a), publisher.publish(b))

        def answer(cluster_id: str) -> list[Envelope[Any]]:
            return recorder.of(ClusterScheduled.subject, cluster_id) or recorder.of(ClusterUnschedulable.subject, cluster_id)

        answers = {}
        for event in (a, b):
            answers[event.cluster_id] = await eventually(
                functools.partial(answer, event.cluster_id),
                f"an answer for {event.cluster_id}",
            )
        kinds = sorted(events[0].type for events in answers.values())
        assert kinds == [ClusterScheduled.subject, ClusterUnschedulable.subject]
        winner, loser = (a, b) if answers[a.cluster_id][0].type == ClusterScheduled.subject else (b, a)
        placed = answers[winner.cluster_id][0].data
        assert {p.host_node for p in placed.placements} == set(pool.nodes)
        refused = answers[loser.cluster_id][0].data
        assert [v.vnode for v in refused.vnodes] == ["worker-0"]
        assert refused.vnodes[0].reason.startswith("needs 8 nvidia.com/gpu; no node has a free GPU")
        assert "none is placed" in refused.message

        # The end of the winner's delete chain frees its GPUs; the loser is placed by itself.
        released = winner.follow(ClusterIPsReleased(uid=winner.data.uid), now=datetime.now(UTC))
        await publisher.publish(released)

        deleted = await recorder.next(ClusterDeleted.subject, winner.cluster_id)
        assert deleted.data.uid == winner.data.uid
        scheduled = await recorder.next(ClusterScheduled.subject, loser.cluster_id)
        assert scheduled.causation_id == loser.id
        assert [p.gpus for p in scheduled.data.placements] == [0, 8]
        assert await gpus_of(first, pool.nodes[0]) == 0


async def test_pods_on_a_node_count_and_a_clusters_own_vnode_pods_are_not_counted_twice(
    nats_url: str,
    js: JetStreamContext,
    kube_api: client.ApiClient,
    kube_config_path: Path,
    namespace: str,
    pool: Pool,
    platforms: Platforms,
) -> None:
    core = client.CoreV1Api(kube_api)
    node = pool.nodes[0]

    def pod(name: str, gpus: int, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeName": node,
                "tolerations": [pool.toleration],
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.invalid/x:1",
                        "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
                    }
                ],
            },
        }

    await core.create_namespaced_pod(namespace, pod("trainer", 6, {"app": "trainer"}))
    async with running_scheduler(nats_url, kube_config_path, pool) as service:
        recorder, publisher = await recording(js)
        gamma, gamma_platform = await platforms(namespace, "gamma", 4, pool)

        await publisher.publish(gamma)

        refused = await recorder.next(ClusterUnschedulable.subject, gamma.cluster_id)
        assert refused.data.vnodes[0].reason == f"needs 4 nvidia.com/gpu; the most free on one node is 2, on {node}"

        await core.delete_namespaced_pod("trainer", namespace, grace_period_seconds=0)
        placed = await recorder.next(ClusterScheduled.subject, gamma.cluster_id)
        assert placed.data.placements[1].host_node == node

        # gamma's vNode pod appears on its node: 4 GPUs in use, and its booking (and placeholder) no longer count.
        await client.AppsV1Api(kube_api).create_namespaced_stateful_set(
            gamma_platform, vnode_statefulset(gamma, "worker-0", 4, pool)
        )

        async def pod_counted() -> bool:
            return await gpus_of(service, node) == 4 and await gpus_of(service, node, "reserved") == 0

        await eventually(pod_counted, "the vNode pod in the inventory")

        delta, _ = await platforms(namespace, "delta", 4, pool)
        await publisher.publish(delta)

        answer = await eventually(
            lambda: recorder.of(ClusterScheduled.subject, delta.cluster_id)
            or recorder.of(ClusterUnschedulable.subject, delta.cluster_id),
            "an answer for delta",
        )
        assert answer[0].type == ClusterScheduled.subject, answer[0].data


async def test_a_vnode_grown_in_place_keeps_its_whole_booking_while_its_smaller_pod_runs(
    scheduling: Scheduling, namespace: str, pool: Pool, platforms: Platforms
) -> None:
    service, recorder, publisher, core, apps, node = scheduling
    small, platform = await platforms(namespace, "grow", 2, pool)
    await placed(recorder, publisher, small)

    # Its vNode pod runs on the node with 2 GPUs, made by a real StatefulSet.
    await apps.create_namespaced_stateful_set(platform, vnode_statefulset(small, "worker-0", 2, pool))
    pod = pod_name("grow", "worker-0")

    async def running() -> bool:
        try:
            found = await core.read_namespaced_pod(pod, platform)
        except ApiException:
            return False
        return found.spec.node_name == node and found.status.phase == "Running"

    await eventually(running, "the 2-GPU vNode pod to run", timeout=60)

    async def in_use(count: int) -> bool:
        return await gpus_of(service, node) == count

    await eventually(lambda: in_use(2), "the vNode pod in the inventory")

    # Grown to 8 GPUs in place: the same host, and all 8 held while the 2-GPU pod still runs.
    grown_spec = cluster(namespace, "grow", 8, pool).data.spec
    grown = small.follow(
        ClusterUpdated(name="grow", namespace=namespace, spec=grown_spec, uid=small.data.uid, generation=2),
        now=datetime.now(UTC),
    )
    await publisher.publish(grown)
    regrown = await recorder.next(ClusterScheduled.subject, small.cluster_id, after=1)
    assert regrown.data.generation == 2
    assert [(p.host_node, p.gpus) for p in regrown.data.placements][1] == (node, 8)

    # Another cluster asking for the 6 GPUs not in use yet is refused: they are booked.
    other, _ = await platforms(namespace, "other", 6, pool)
    await publisher.publish(other)
    refused = await recorder.next(ClusterUnschedulable.subject, other.cluster_id)
    assert refused.data.vnodes[0].reason.startswith("needs 6 nvidia.com/gpu; no node has a free GPU"), refused
    assert recorder.of(ClusterScheduled.subject, other.cluster_id) == []


async def test_a_placeholder_holds_booked_gpus_against_kube_scheduler_until_the_vnode_pod_takes_them(
    scheduling: Scheduling, namespace: str, pool: Pool, platforms: Platforms
) -> None:
    service, recorder, publisher, core, apps, node = scheduling
    # Placeholders and vNode pods live in the cluster's platform namespace; tenant pods elsewhere.
    held, platform = await platforms(namespace, "held", 8, pool)
    assert platform == platform_namespace(namespace, "held")
    await placed(recorder, publisher, held)

    async def phase(name: str) -> str | None:
        try:
            pod = await core.read_namespaced_pod(name, platform)
        except ApiException as error:
            assert error.status == 404, error
            return None
        return f"{pod.spec.node_name}/{pod.status.phase}"

    placeholder = placeholder_name("held", "worker-0")

    async def placeholder_runs() -> bool:
        return await phase(placeholder) == f"{node}/Running"

    await eventually(placeholder_runs, "the placeholder pod to run on the booked node", timeout=60)
    assert await gpus_of(service, node) == 0  # a placeholder holds a booking, it uses nothing

    # A GPU pod kube-scheduler places (no nodeName) cannot have the booked GPUs.
    foreign = {
        "metadata": {"name": "foreign"},
        "spec": {
            "nodeSelector": {POOL_LABEL: pool.id},
            "tolerations": [pool.toleration],
            "containers": [
                {"name": "main", "image": "registry.invalid/x:1", "resources": {"limits": {GPU_RESOURCE: "1"}}}
            ],
        },
    }
    await core.create_namespaced_pod(namespace, foreign)

    async def refused() -> str | None:
        pod = await core.read_namespaced_pod("foreign", namespace)
        scheduled = next((c for c in pod.status.conditions or () if c.type == "PodScheduled"), None)
        return scheduled.message if scheduled is not None and scheduled.reason == "Unschedulable" else None

    message = await eventually(refused, "kube-scheduler to refuse the foreign pod", timeout=60)
    assert f"Insufficient {GPU_RESOURCE}" in message

    # The vnode stage deletes the placeholder and starts the vNode pod: it gets all 8 GPUs,
    # the pending pod none in between.
    await core.delete_namespaced_pod(placeholder, platform, grace_period_seconds=0)
    await apps.create_namespaced_stateful_set(platform, vnode_statefulset(held, "worker-0", 8, pool))
    vnode_pod = pod_name("held", "worker-0")

    async def vnode_runs() -> bool:
        return await phase(vnode_pod) == f"{node}/Running"

    await eventually(vnode_runs, "the vNode pod to run", timeout=60)

    # Its finalizer kept the deleted placeholder counted until the scheduler saw the vNode pod.
    async def placeholder_gone() -> bool:
        return await phase(placeholder) is None

    await eventually(placeholder_gone, "the scheduler to let the placeholder go")
    await asyncio.sleep(1)  # kube-scheduler retries the pending pod on each of those changes
    assert (await core.read_namespaced_pod("foreign", namespace)).spec.node_name is None

    # Deleted: the placeholders still there (the master's) go with the booking.
    master_placeholder = placeholder_name("held", "master")
    assert await phase(master_placeholder) is not None
    await publisher.publish(held.follow(ClusterIPsReleased(uid=held.data.uid), now=datetime.now(UTC)))
    await recorder.next(ClusterDeleted.subject, held.cluster_id)

    async def master_placeholder_gone() -> bool:
        return await phase(master_placeholder) is None

    await eventually(master_placeholder_gone, "the master's placeholder to be deleted")


async def test_metrics_name_the_gpus_of_each_node(
    nats_url: str, js: JetStreamContext, kube_config_path: Path, pool: Pool
) -> None:
    async with running_scheduler(nats_url, kube_config_path, pool) as service:

        async def scraped() -> str | None:
            text = await scrape(service)
            return text if f'node="{pool.nodes[0]}"' in text else None

        text = await eventually(scraped, "the pool's node in the metrics")

    line = next(
        line for line in text.splitlines() if line.startswith("vk8s_scheduler_gpus{") and 'state="capacity"' in line
    )
    assert 'model="NVIDIA-A100-SXM4-80GB"' in line and 'zone="zone-a"' in line and line.endswith(" 8.0")
    for name in ("vk8s_scheduler_pending_clusters", "vk8s_scheduler_reservations", "vk8s_scheduler_nodes"):
        assert f"\n{name}" in text


async def test_an_ask_for_a_cluster_whose_object_is_gone_books_nothing(
    scheduling: Scheduling, namespace: str, pool: Pool, platforms: Platforms
) -> None:
    """A cluster.accepted delivered again after the delete chain released the cluster (an ack lost
    in a restart): no Vk8s with that uid exists, so nothing is booked or answered; a live cluster
    asking next is placed on the GPUs the ghost would have taken."""
    service, recorder, publisher, *_ = scheduling
    ghost = cluster(namespace, "ghost", 8, pool)
    acked = {"subject": ClusterAccepted.subject, "outcome": "ack"}
    before = service.metrics_registry.get_sample_value("vk8s_scheduler_messages_total", acked) or 0.0
    await publisher.publish(ghost)

    async def handled() -> bool:
        return (service.metrics_registry.get_sample_value("vk8s_scheduler_messages_total", acked) or 0.0) > before

    await eventually(handled, "the ghost's cluster.accepted handled")
    assert recorder.of(ClusterScheduled.subject, ghost.cluster_id) == []
    assert recorder.of(ClusterUnschedulable.subject, ghost.cluster_id) == []
    live, _ = await platforms(namespace, "live", 8, pool)
    await placed(recorder, publisher, live)

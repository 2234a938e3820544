"""The rollout tracker answering the waits the vnode handlers record, on a real KV bucket and a
real JetStream, with the watched StatefulSets and the pods' problems faked."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.events import Publisher, Reason, StreamSettings, TransientError, ensure_stream
from libs.events.catalog import ClusterFailed, ClusterVNodesReady
from libs.kube import WatchEvent
from libs.kube.vnodes import statefulset_name
from services.vnode import logic
from services.vnode.adapters.kube import WatchedObjects
from services.vnode.adapters.metrics import VNodeMetrics
from services.vnode.adapters.store import RecordStore
from services.vnode.handlers import ROLLOUT_TRACKER, VNodeHandlers
from services.vnode.rollouts import RolloutTracker
from services.vnode.settings import VNodeSettings
from tests.component.vnode.support import CLUSTER_ID, PLATFORM_NAMESPACE, FakeHost, accepted, allocated, paused, recorded
from tests.support.streams import caused_by, events_on, next_event
from tests.unit.vnode.factories import AT, UID

READY_TIMEOUT_S = 60
IPS = {"master": "10.200.0.2", "worker-0": "10.200.0.3"}
HOSTS = {"master": "gpu-node-0", "worker-0": "gpu-node-1"}


@dataclass
class Clock:
    now: datetime = AT

    def __call__(self) -> datetime:
        return self.now


@dataclass
class FakeWatch:
    """The watched vNode StatefulSets (each carries its rollout) and what the pods' statuses say;
    `while_reading_pods` runs when the tracker asks for them, as another handler could meanwhile."""

    problems: list[str] = field(default_factory=list)
    while_reading_pods: Callable[[], Awaitable[Any]] | None = None

    @property
    def list_vnode_statefulsets(self) -> Callable[..., Awaitable[Any]]:
        raise AssertionError("the tests hand the tracker its watch events")

    def rollout(self, statefulset: Any) -> logic.VNodeRollout | None:
        rollout: logic.VNodeRollout = statefulset.rollout
        return rollout

    async def pod_problems(self, namespace: str, uid: str) -> list[str]:
        assert (namespace, uid) == (PLATFORM_NAMESPACE, UID)
        if self.while_reading_pods is not None:
            await self.while_reading_pods()
        return self.problems


def running_statefulset(vnode: str) -> Any:
    """A vNode StatefulSet as watched, its pod running where and as it was placed."""
    name = statefulset_name("team-a", vnode)
    rollout = logic.VNodeRollout(
        namespace=PLATFORM_NAMESPACE,
        tenant_namespace="ml",
        name=name,
        cluster="team-a",
        vnode=vnode,
        uid=UID,
        generation=1,
        observed_generation=1,
        replicas=1,
        status_replicas=1,
        ready_replicas=1,
        updated_replicas=1,
        current_revision="r1",
        update_revision="r1",
        node_name=HOSTS[vnode],
        ip_annotation=json.dumps([IPS[vnode]]),
    )
    return SimpleNamespace(metadata=SimpleNamespace(namespace=PLATFORM_NAMESPACE, name=name), rollout=rollout)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watch() -> FakeWatch:
    return FakeWatch()


@pytest.fixture
async def tracker(js: JetStreamContext, store: RecordStore, watch: FakeWatch, clock: Clock) -> RolloutTracker:
    await ensure_stream(js, StreamSettings())
    watched: WatchedObjects = watch
    return RolloutTracker(
        kube=watched,
        store=store,
        publisher=Publisher(js).only(ROLLOUT_TRACKER),
        metrics=VNodeMetrics(CollectorRegistry()),
        settings=VNodeSettings(ready_timeout_s=READY_TIMEOUT_S),
        clock=clock,
    )


@pytest.fixture
def handlers(store: RecordStore, host: FakeHost, tracker: RolloutTracker, clock: Clock) -> VNodeHandlers:
    return VNodeHandlers(settings=VNodeSettings(), store=store, kube=host, tracker=tracker, clock=clock)


async def test_vnodes_running_as_placed_answer_the_allocation_once(
    js: JetStreamContext, handlers: VNodeHandlers, tracker: RolloutTracker, store: RecordStore
) -> None:
    allocation = allocated()
    await handlers.on_spec(accepted())
    await handlers.on_allocated(allocation)
    tracker.observe(WatchEvent("SYNC", running_statefulset("master")))
    tracker.observe(WatchEvent("SYNC", running_statefulset("worker-0"), synced=True))

    await tracker.evaluate(CLUSTER_ID)
    await tracker.evaluate(CLUSTER_ID)

    ready = await next_event(js, ClusterVNodesReady.subject, caused_by(allocation))
    assert {(v.vnode, v.host_node, v.ip) for v in ready.data.vnodes} == {
        (vnode, HOSTS[vnode], IPS[vnode]) for vnode in IPS
    }
    assert len(await events_on(js, ClusterVNodesReady.subject)) == 1
    assert (await recorded(store)).awaiting is None


async def test_a_vnode_not_running_by_the_deadline_fails_the_cluster_with_its_pods_problems(
    js: JetStreamContext, handlers: VNodeHandlers, tracker: RolloutTracker, watch: FakeWatch, clock: Clock
) -> None:
    allocation = allocated()
    await handlers.on_spec(accepted())
    await handlers.on_allocated(allocation)
    tracker.observe(WatchEvent("SYNC", running_statefulset("master"), synced=True))
    watch.problems = ["team-a-worker-0-0: Pending (ImagePullBackOff)"]

    await tracker.evaluate(CLUSTER_ID)
    assert len(await events_on(js, ClusterFailed.subject)) == 0  # before the deadline it waits
    clock.now += timedelta(seconds=READY_TIMEOUT_S + 1)
    await tracker.evaluate(CLUSTER_ID)

    failed = await next_event(js, ClusterFailed.subject, caused_by(allocation))
    assert failed.data.reason == Reason.VNODES_NOT_RUNNING
    assert "worker-0" in failed.data.message and "ImagePullBackOff" in failed.data.message


async def test_a_wait_replaced_while_it_is_evaluated_is_not_answered(
    js: JetStreamContext,
    handlers: VNodeHandlers,
    tracker: RolloutTracker,
    watch: FakeWatch,
    clock: Clock,
    store: RecordStore,
) -> None:
    await handlers.on_spec(accepted())
    await handlers.on_allocated(allocated())
    tracker.observe(WatchEvent("SYNC", None, synced=True))
    watch.while_reading_pods = lambda: handlers.on_spec(paused())  # a pause recorded meanwhile
    clock.now += timedelta(seconds=READY_TIMEOUT_S + 1)

    with pytest.raises(TransientError) as raised:
        await tracker.evaluate(CLUSTER_ID)

    assert raised.value.reason == Reason.CONFLICT
    assert len(await events_on(js, ClusterFailed.subject)) == 0
    awaiting = (await recorded(store)).awaiting
    assert awaiting is not None and awaiting.target == "paused"  # evaluated next, on its own

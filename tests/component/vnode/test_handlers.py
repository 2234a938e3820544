"""The vnode handlers on a real KV bucket, with the host cluster faked: what they apply, record
and delete for each event, and what they refuse."""

from __future__ import annotations

from typing import Any

import pytest

from libs.events import Reason, TransientError
from libs.events.catalog import ClusterVNodesDeleted
from libs.kube.vnodes import placeholder_name, statefulset_name
from services.vnode import logic
from services.vnode.adapters.kube import HostObjects
from services.vnode.adapters.store import RecordStore
from services.vnode.handlers import VNodeHandlers
from services.vnode.settings import VNodeSettings
from tests.component.vnode.support import (
    CLUSTER_ID,
    PLATFORM_NAMESPACE,
    FakeHost,
    FakeRollouts,
    accepted,
    allocated,
    delete_requested,
    live_vk8s,
    paused,
    recorded,
    running,
)
from tests.unit.vnode.factories import AT, UID


@pytest.fixture
def rollouts() -> FakeRollouts:
    return FakeRollouts()


@pytest.fixture
def handlers(store: RecordStore, host: FakeHost, rollouts: FakeRollouts) -> VNodeHandlers:
    kube: HostObjects = host
    return VNodeHandlers(settings=VNodeSettings(), store=store, kube=kube, tracker=rollouts, clock=lambda: AT)


def statefulsets(plan: logic.Plan) -> dict[str, dict[str, Any]]:
    return {body["metadata"]["name"]: body for body in plan.apply if body["kind"] == "StatefulSet"}


async def begin_delete(handlers: VNodeHandlers, host: FakeHost) -> None:
    """The Vk8s is being deleted and its master's StatefulSet is still there: the handler waits."""
    host.vk8s = live_vk8s(deleting=True)
    host.remaining = [f"StatefulSet/{statefulset_name('team-a', 'master')}"]
    with pytest.raises(TransientError) as raised:
        await handlers.on_delete_requested(delete_requested())
    assert raised.value.reason == Reason.DELETING


async def test_spec_then_allocation_runs_each_vnode_on_its_host_with_its_gpus_and_labels(
    handlers: VNodeHandlers, host: FakeHost, rollouts: FakeRollouts, store: RecordStore
) -> None:
    assert await handlers.on_spec(accepted()) == []
    assert host.executed == []  # nothing to run before the scheduler placed it
    assert (await recorded(store)).allocation is None

    assert await handlers.on_allocated(allocated()) == []

    (plan,) = host.executed
    assert plan.namespace == PLATFORM_NAMESPACE
    assert plan.placeholders == (placeholder_name("team-a", "master"), placeholder_name("team-a", "worker-0"))
    placed = statefulsets(plan)
    for vnode, host_node in (("master", "gpu-node-0"), ("worker-0", "gpu-node-1")):
        body = placed[statefulset_name("team-a", vnode)]
        pod = body["spec"]["template"]
        assert body["spec"]["replicas"] == 1
        assert pod["spec"]["nodeName"] == host_node
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert body["metadata"]["labels"]["team"] == "vision"
    record = await recorded(store)
    assert record.awaiting is not None and record.awaiting.target == "ready"
    assert record.allocation is not None and record.allocation.vnode_ips["worker-0"] == "10.200.0.3"
    assert rollouts.kicked == [CLUSTER_ID]


async def test_pause_scales_every_vnode_to_zero_and_awaits_the_pause(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore
) -> None:
    await running(handlers)

    await handlers.on_spec(paused())

    replicas = {name: body["spec"]["replicas"] for name, body in statefulsets(host.executed[-1]).items()}
    assert replicas == {statefulset_name("team-a", "master"): 0, statefulset_name("team-a", "worker-0"): 0}
    assert host.executed[-1].placeholders == ()  # a paused cluster frees its hosts, holds none
    record = await recorded(store)
    assert record.paused and record.awaiting is not None and record.awaiting.target == "paused"


async def test_allocation_redelivered_applies_the_same_plan_again(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore
) -> None:
    allocation = allocated()
    await handlers.on_spec(accepted())
    await handlers.on_allocated(allocation)
    first = await recorded(store)

    await handlers.on_allocated(allocation)

    assert len(host.executed) == 2 and host.executed[0] == host.executed[1]
    assert await recorded(store) == first


async def test_allocation_before_its_spec_event_takes_the_spec_from_the_object(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore
) -> None:
    await handlers.on_allocated(allocated())

    assert set(statefulsets(host.executed[0])) == {statefulset_name("team-a", "master"), statefulset_name("team-a", "worker-0")}
    record = await recorded(store)
    assert record.uid == UID and record.spec.kubeflow is None  # no Kubeflow password in the record


async def test_allocation_naming_a_re_created_vk8s_replaces_the_earlier_objects_record(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore
) -> None:
    await handlers.on_spec(accepted())
    host.vk8s = live_vk8s(uid="a-newer-incarnation")

    await handlers.on_allocated(allocated(uid=UID))  # the earlier object's, late: nothing of it made
    assert host.executed == []
    await handlers.on_allocated(allocated(uid="a-newer-incarnation"))

    assert set(statefulsets(host.executed[0])) == {statefulset_name("team-a", "master"), statefulset_name("team-a", "worker-0")}
    assert (await recorded(store)).uid == "a-newer-incarnation"


async def test_allocation_for_a_re_created_vk8s_naming_no_object_waits_for_its_spec(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore
) -> None:
    await handlers.on_spec(accepted())
    host.vk8s = live_vk8s(uid="a-newer-incarnation")

    with pytest.raises(TransientError) as raised:
        await handlers.on_allocated(allocated())

    assert raised.value.reason == Reason.SPEC_NOT_RECORDED
    assert host.executed == []


@pytest.mark.parametrize("vk8s", [None, live_vk8s(deleting=True)], ids=["gone", "being-deleted"])
async def test_allocation_of_a_cluster_gone_or_going_creates_nothing(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore, vk8s: dict[str, Any] | None
) -> None:
    host.vk8s = vk8s

    assert await handlers.on_allocated(allocated()) == []

    assert host.executed == []
    assert await store.get(CLUSTER_ID) is None


async def test_forged_delete_request_of_a_live_cluster_deletes_nothing(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore
) -> None:
    await running(handlers)

    assert await handlers.on_delete_requested(delete_requested()) == []

    assert host.deletes == []
    assert not (await recorded(store)).deleting


async def test_delete_of_a_vk8s_being_deleted_answers_once_every_object_is_gone(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore
) -> None:
    await running(handlers)

    await begin_delete(handlers, host)

    record = await recorded(store)
    assert record.deleting and record.awaiting is None  # no readiness answered for a cluster going
    host.remaining = []
    (answer,) = await handlers.on_delete_requested(delete_requested())
    assert answer.data == ClusterVNodesDeleted(uid=UID)
    assert host.deletes == [(PLATFORM_NAMESPACE, UID, False)] * 2
    assert host.retained == []
    assert await store.get(CLUSTER_ID) is None


async def test_volumes_the_vk8s_asks_to_keep_outlive_its_delete_and_its_redeliveries(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore
) -> None:
    retain = {logic.RETAIN_VOLUMES_ANNOTATION: "true"}
    await handlers.on_spec(accepted(annotations=retain))
    await handlers.on_allocated(allocated())
    host.vk8s = live_vk8s(deleting=True, annotations=retain)

    await handlers.on_delete_requested(delete_requested())
    await handlers.on_delete_requested(delete_requested())  # the record is gone: the object says so
    host.vk8s = None
    await handlers.on_delete_requested(delete_requested())  # both gone: what is left was retained

    assert host.deletes == [(PLATFORM_NAMESPACE, UID, True)] * 3
    assert host.retained == [(PLATFORM_NAMESPACE, UID)] * 3
    assert await store.get(CLUSTER_ID) is None


async def test_spec_event_after_the_delete_began_changes_nothing(
    handlers: VNodeHandlers, host: FakeHost, store: RecordStore
) -> None:
    await running(handlers)
    await begin_delete(handlers, host)

    assert await handlers.on_spec(paused()) == []

    assert len(host.executed) == 1
    assert not (await recorded(store)).paused

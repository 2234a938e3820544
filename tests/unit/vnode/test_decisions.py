"""What the vnode stage decides on each event, and when a wait is over."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from libs.api.models import Vk8sSpec
from libs.events import Envelope, PermanentError, TransientError
from libs.events.catalog import (
    ClusterAccepted,
    ClusterIPsAllocated,
    ClusterPaused,
    ClusterUpdated,
    ClusterVNodesReady,
    VNodePlacement,
    VNodeRef,
)
from libs.kube.vnodes import platform_namespace
from services.vnode import logic
from services.vnode.settings import VNodeSettings
from tests.support.events import spec_document
from tests.unit.vnode.factories import AT, UID

SETTINGS = VNodeSettings(ready_timeout_s=60)
SPEC = Vk8sSpec.model_validate(spec_document(gpus=1, workers=1))


def accepted(at: Any = AT, uid: str = UID) -> Envelope[ClusterAccepted]:
    data = ClusterAccepted(name="team-a", namespace="ml", spec=SPEC, uid=uid, generation=1, labels={"team": "vision"})
    return Envelope.new(data, cluster_id="ml/team-a", now=at)


def updated(at: Any, *, paused: bool = False, generation: int = 1, **changes: Any) -> Envelope[ClusterUpdated]:
    fields = {"name": "team-a", "namespace": "ml", "spec": SPEC, "uid": UID, "generation": generation, "paused": paused}
    return Envelope.new(ClusterUpdated(**{**fields, **changes}), cluster_id="ml/team-a", now=at)


def allocated(
    at: Any = AT, *, generation: int = 1, hosts: tuple[str, str] = ("gpu-node-0", "gpu-node-1"), **changes: Any
) -> Envelope[ClusterIPsAllocated]:
    fields: dict[str, Any] = {
        "generation": generation,
        "vnode_ips": {"master": "10.200.0.2", "worker-0": "10.200.0.3"},
        "pod_cidr": "90.244.0.0/16",
        "service_cidr": "90.96.0.0/12",
        "placements": [
            VNodePlacement(vnode="master", role="master", host_node=hosts[0], gpus=1),
            VNodePlacement(vnode="worker-0", role="worker", host_node=hosts[1], gpus=1),
        ],
    }
    return Envelope.new(ClusterIPsAllocated(**{**fields, **changes}), cluster_id="ml/team-a", now=at)


def recorded(envelope: Envelope[Any], previous: logic.ClusterRecord | None = None) -> logic.ClusterRecord:
    outcome = logic.on_spec_event(previous, envelope)
    assert isinstance(outcome, logic.ClusterRecord), outcome
    return outcome


def placed(
    envelope: Envelope[ClusterIPsAllocated], previous: logic.ClusterRecord, now: Any = None
) -> logic.ClusterRecord:
    outcome = logic.on_allocated(previous, envelope, now or envelope.time, resume_grace_s=10)
    assert isinstance(outcome, logic.ClusterRecord), outcome
    return outcome


def rollout(vnode: str, host: str, ip: str, **changes: Any) -> logic.VNodeRollout:
    fields: dict[str, Any] = {
        "namespace": platform_namespace("ml", "team-a"),
        "tenant_namespace": "ml",
        "name": f"team-a-{vnode}",
        "cluster": "team-a",
        "vnode": vnode,
        "uid": UID,
        "generation": 2,
        "observed_generation": 2,
        "replicas": 1,
        "status_replicas": 1,
        "ready_replicas": 1,
        "updated_replicas": 1,
        "current_revision": "r2",
        "update_revision": "r2",
        "node_name": host,
        "ip_annotation": json.dumps([ip]),
    }
    return logic.VNodeRollout(**{**fields, **changes})


def running() -> dict[str, logic.VNodeRollout]:
    return {
        "master": rollout("master", "gpu-node-0", "10.200.0.2"),
        "worker-0": rollout("worker-0", "gpu-node-1", "10.200.0.3"),
    }


def test_accepted_keeps_spec_labels_and_uid_with_nothing_allocated() -> None:
    rec = recorded(accepted())

    assert (rec.uid, rec.name, rec.namespace, rec.generation) == (UID, "team-a", "ml", 1)
    assert rec.labels == {"team": "vision"} and rec.spec == SPEC
    assert rec.allocation is None and rec.awaiting is None and not rec.paused


def test_older_spec_event_is_ignored() -> None:
    rec = recorded(updated(AT + timedelta(seconds=5), labels={"team": "new"}), recorded(accepted()))
    assert isinstance(logic.on_spec_event(rec, updated(AT + timedelta(seconds=1))), logic.Ignore)


def test_spec_events_are_ignored_while_deleting() -> None:
    rec = recorded(accepted()).model_copy(update={"deleting": True})
    assert isinstance(logic.on_spec_event(rec, updated(AT + timedelta(seconds=1))), logic.Ignore)


def test_new_incarnation_starts_from_scratch() -> None:
    rec = placed(allocated(), recorded(accepted()))
    fresh = recorded(accepted(AT - timedelta(hours=1), uid="new-uid"), rec)
    assert fresh.uid == "new-uid" and fresh.allocation is None and not fresh.scaled_up


def test_allocation_scales_up_and_waits_for_ready() -> None:
    envelope = allocated(AT + timedelta(seconds=2))
    rec = placed(envelope, recorded(accepted()), now=AT + timedelta(seconds=3))

    assert rec.scaled_up and rec.allocation is not None and rec.allocation.generation == 1
    assert rec.awaiting is not None and rec.awaiting.target == "ready"
    assert rec.awaiting.since == AT + timedelta(seconds=3)
    assert rec.awaiting.cause_envelope() == envelope


def test_allocation_before_its_spec_is_retried() -> None:
    with pytest.raises(TransientError):
        logic.on_allocated(recorded(accepted()), allocated(generation=2), AT, resume_grace_s=10)


def live_object(*, uid: str = UID, generation: int = 1) -> dict[str, Any]:
    """A Vk8s object as read from the API, with a plain Kubeflow password (deprecated, accepted there)."""
    spec = spec_document(gpus=1, workers=1)
    kubeflow = {key: value for key, value in spec["kubeflow"].items() if key != "passwordSecretRef"}
    spec["kubeflow"] = {**kubeflow, "password": "plain"}
    metadata = {
        "uid": uid,
        "name": "team-a",
        "namespace": "ml",
        "generation": generation,
        "creationTimestamp": "2026-11-28T11:59:00Z",
        "labels": {"team": "vision"},
        "annotations": {"note": "x"},
    }
    return {"metadata": metadata, "spec": spec}


def test_an_allocation_before_its_spec_event_takes_the_spec_from_the_live_object() -> None:
    rec = logic.with_object_spec(None, live_object())
    assert rec is not None
    assert (rec.uid, rec.cluster_id, rec.generation) == (UID, "ml/team-a", 1)
    assert (rec.labels, rec.annotations) == ({"team": "vision"}, {"note": "x"})
    assert [node.name for node in rec.spec.nodes] == ["master", "worker-0"]
    assert rec.spec.kubeflow is None  # its plain password never reaches the record
    assert rec.observed_at == AT - timedelta(minutes=1)
    placed_record = placed(allocated(AT + timedelta(seconds=2)), rec)
    assert placed_record.scaled_up and placed_record.awaiting is not None
    # The spec event that comes later is still taken in, and keeps the allocation.
    later = recorded(accepted(AT + timedelta(seconds=3)), placed_record)
    assert later.allocation == placed_record.allocation and later.spec.kubeflow is not None


def test_a_record_of_an_older_generation_takes_the_newer_spec_from_the_object_and_keeps_the_rest() -> None:
    rec = placed(allocated(), recorded(accepted()))
    newer = logic.with_object_spec(rec, live_object(generation=2))
    assert newer is not None and newer.generation == 2
    assert (newer.allocation, newer.observed_at, newer.awaiting) == (rec.allocation, rec.observed_at, rec.awaiting)
    placed(allocated(AT + timedelta(seconds=5), generation=2), newer)


def test_a_record_of_another_uid_is_replaced_from_the_object_only_for_an_allocation_naming_it() -> None:
    earlier = placed(allocated(), recorded(accepted()))
    assert logic.with_object_spec(earlier, live_object(uid="re-created")) is None
    assert logic.with_object_spec(earlier, live_object(uid="re-created"), allocated_for=UID) is None
    fresh = logic.with_object_spec(earlier, live_object(uid="re-created"), allocated_for="re-created")
    assert fresh is not None and (fresh.uid, fresh.allocation, fresh.awaiting) == ("re-created", None, None)


def test_stale_allocation_is_ignored() -> None:
    rec = recorded(updated(AT, generation=3))
    rec = placed(allocated(generation=3), rec)
    assert isinstance(logic.on_allocated(rec, allocated(generation=2), AT, resume_grace_s=10), logic.Ignore)


def test_allocation_without_an_ip_fails() -> None:
    envelope = allocated(vnode_ips={"master": "10.200.0.2"})
    with pytest.raises(PermanentError, match="worker-0"):
        logic.on_allocated(recorded(accepted()), envelope, AT, resume_grace_s=10)


def test_allocation_placing_no_spec_node_fails() -> None:
    envelope = allocated(
        vnode_ips={"other": "10.200.0.9"},
        placements=[VNodePlacement(vnode="other", role="master", host_node="gpu-node-0", gpus=0)],
    )
    with pytest.raises(PermanentError):
        logic.on_allocated(recorded(accepted()), envelope, AT, resume_grace_s=10)


def test_pause_stops_the_vnodes_and_waits_to_answer() -> None:
    running_record = placed(allocated(), recorded(accepted()))
    pause = updated(AT + timedelta(seconds=5), paused=True)

    rec = recorded(pause, running_record)

    assert rec.paused and not rec.scaled_up and rec.allocation == running_record.allocation
    assert rec.awaiting is not None and rec.awaiting.target == "paused"
    assert rec.awaiting.cause_envelope() == pause
    assert {b["spec"]["replicas"] for b in logic.plan(rec, [], SETTINGS).apply if "replicas" in b["spec"]} == {0}


def test_resume_keeps_replicas_at_zero_until_reallocated() -> None:
    paused = recorded(updated(AT + timedelta(seconds=5), paused=True), placed(allocated(), recorded(accepted())))

    resumed = recorded(updated(AT + timedelta(seconds=9)), paused)

    assert not resumed.paused and not resumed.scaled_up and resumed.awaiting is None
    assert {b["spec"]["replicas"] for b in logic.plan(resumed, [], SETTINGS).apply if "replicas" in b["spec"]} == {0}
    again = placed(allocated(AT + timedelta(seconds=10), hosts=("gpu-node-1", "gpu-node-1")), resumed)
    statefulsets = [b for b in logic.plan(again, [], SETTINGS).apply if b["kind"] == "StatefulSet"]
    assert {b["spec"]["replicas"] for b in statefulsets} == {1}
    assert {b["spec"]["template"]["spec"]["nodeName"] for b in statefulsets} == {"gpu-node-1"}


def test_allocation_while_paused_waits_briefly_for_the_resume_then_is_ignored() -> None:
    paused = recorded(updated(AT + timedelta(seconds=5), paused=True), placed(allocated(), recorded(accepted())))
    late = allocated(AT + timedelta(seconds=6))

    with pytest.raises(TransientError):
        logic.on_allocated(paused, late, AT + timedelta(seconds=7), resume_grace_s=10)
    assert isinstance(logic.on_allocated(paused, late, AT + timedelta(seconds=30), resume_grace_s=10), logic.Ignore)


def test_label_change_of_a_running_cluster_keeps_it_running() -> None:
    running_record = placed(allocated(), recorded(accepted()))
    rec = recorded(updated(AT + timedelta(seconds=5), labels={"team": "nlp"}), running_record)

    assert rec.scaled_up and rec.labels == {"team": "nlp"} and rec.awaiting is not None  # still awaiting ready
    statefulset = next(b for b in logic.plan(rec, [], SETTINGS).apply if b["kind"] == "StatefulSet")
    assert statefulset["metadata"]["labels"]["team"] == "nlp" and statefulset["spec"]["replicas"] == 1


def test_added_worker_gets_a_statefulset_once_placed() -> None:
    rec = placed(allocated(), recorded(accepted()))
    grown = Vk8sSpec.model_validate(spec_document(gpus=1, workers=2))
    rec = recorded(updated(AT + timedelta(seconds=5), generation=2, spec=grown), rec)
    names = {b["metadata"]["name"] for b in logic.plan(rec, [], SETTINGS).apply if b["kind"] == "StatefulSet"}
    assert names == {"team-a-master", "team-a-worker-0"}, "not before the scheduler placed it"

    envelope = allocated(
        AT + timedelta(seconds=6),
        generation=2,
        vnode_ips={"master": "10.200.0.2", "worker-0": "10.200.0.3", "worker-1": "10.200.0.4"},
        placements=[
            VNodePlacement(vnode="master", role="master", host_node="gpu-node-0", gpus=1),
            VNodePlacement(vnode="worker-0", role="worker", host_node="gpu-node-1", gpus=1),
            VNodePlacement(vnode="worker-1", role="worker", host_node="gpu-node-1", gpus=1),
        ],
    )
    rec = placed(envelope, rec)
    names = {b["metadata"]["name"] for b in logic.plan(rec, [], SETTINGS).apply if b["kind"] == "StatefulSet"}
    assert names == {"team-a-master", "team-a-worker-0", "team-a-worker-1"}


def test_ready_once_every_placed_vnode_runs_its_current_template() -> None:
    rec = placed(allocated(), recorded(accepted()))

    outcome = logic.evaluate(rec, running(), AT, SETTINGS)

    refs = [
        VNodeRef(vnode=vnode, role=role, pod=pod, host_node=host, ip=ip, gpus=1)
        for vnode, role, pod, host, ip in (
            ("master", "master", "team-a-master-0", "gpu-node-0", "10.200.0.2"),
            ("worker-0", "worker", "team-a-worker-0-0", "gpu-node-1", "10.200.0.3"),
        )
    ]
    assert outcome == logic.Reached(
        ClusterVNodesReady(generation=1, vnodes=refs, pod_cidr="90.244.0.0/16", service_cidr="90.96.0.0/12")
    )


@pytest.mark.parametrize(
    "change",
    [
        {"ready_replicas": 0},
        {"observed_generation": 1},
        {"updated_replicas": 0},
        {"current_revision": "r1"},
        {"replicas": 0},
        {"node_name": "gpu-node-9"},  # the cache still shows the previous placement
        {"ip_annotation": '["10.200.0.99"]'},
    ],
)
def test_not_ready_while_a_vnode_is_behind(change: dict[str, Any]) -> None:
    rec = placed(allocated(), recorded(accepted()))
    rollouts = running()
    rollouts["worker-0"] = rollout("worker-0", "gpu-node-1", "10.200.0.3", **change)

    outcome = logic.evaluate(rec, rollouts, AT, SETTINGS)

    assert outcome == logic.Waiting("vNode(s) not running yet: worker-0")


def test_missing_vnode_times_out() -> None:
    rec = placed(allocated(), recorded(accepted()))
    rollouts = {"master": running()["master"]}

    assert isinstance(logic.evaluate(rec, rollouts, AT + timedelta(seconds=59), SETTINGS), logic.Waiting)
    outcome = logic.evaluate(rec, rollouts, AT + timedelta(seconds=61), SETTINGS)
    assert outcome == logic.TimedOut("vNode(s) not running yet: worker-0 after 60s")


def test_a_timed_out_wait_fails_the_cluster_saying_why_the_pods_do_not_run() -> None:
    rec = placed(allocated(), recorded(accepted()))
    assert rec.awaiting is not None
    timed_out = logic.TimedOut("vNode(s) not running yet: worker-0 after 60s")

    failed = logic.rollout_failed(rec.awaiting, timed_out, ["t-worker-0: Pending (ImagePullBackOff)"])

    assert failed.stage == "vnode"
    assert failed.reason == "VNodesNotRunning"
    assert failed.message == "vNode(s) not running yet: worker-0 after 60s; t-worker-0: Pending (ImagePullBackOff)"
    assert failed.failed_event == rec.awaiting.cause_envelope().type == "cluster.ips.allocated"
    assert failed.generation == 1


def test_a_timed_out_pause_fails_the_cluster_as_not_stopped() -> None:
    rec = recorded(updated(AT, paused=True), placed(allocated(), recorded(accepted())))
    assert rec.awaiting is not None and rec.awaiting.target == "paused"

    failed = logic.rollout_failed(rec.awaiting, logic.TimedOut("vNode(s) not stopped yet: master after 60s"), ["ignored"])

    assert (failed.reason, failed.message) == ("VNodesNotStopped", "vNode(s) not stopped yet: master after 60s")
    assert failed.failed_event == "cluster.updated"


def test_paused_once_no_pod_is_left() -> None:
    rec = recorded(updated(AT, paused=True), placed(allocated(), recorded(accepted())))
    stopping = {name: r for name, r in running().items()}
    stopping["master"] = rollout("master", "gpu-node-0", "10.200.0.2", replicas=0, status_replicas=1)
    stopped = {name: rollout(name, "x", "y", replicas=0, status_replicas=0) for name in running()}

    assert logic.evaluate(rec, stopping, AT, SETTINGS) == logic.Waiting("vNode(s) not stopped yet: master, worker-0")
    # With the time the pause was asked: the scheduler tells a pause from a resume asked after it.
    assert logic.evaluate(rec, stopped, AT, SETTINGS) == logic.Reached(ClusterPaused(generation=1, asked_at=AT))
    assert logic.evaluate(rec, {}, AT, SETTINGS) == logic.Reached(ClusterPaused(generation=1, asked_at=AT))


def test_rollout_state() -> None:
    assert rollout("m", "h", "i").state == "running"
    assert rollout("m", "h", "i", ready_replicas=0).state == "starting"
    assert rollout("m", "h", "i", replicas=0).state == "stopping"
    assert rollout("m", "h", "i", replicas=0, status_replicas=0).state == "stopped"


def test_resumed_before_the_pause_completed_drops_the_pause_answer() -> None:
    paused = recorded(updated(AT + timedelta(seconds=1), paused=True), placed(allocated(), recorded(accepted())))
    resumed = recorded(updated(AT + timedelta(seconds=2)), paused)
    assert resumed.awaiting is None

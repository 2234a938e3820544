"""The projector's fold: every event type, redelivery, any arrival order, never backwards."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import pytest

from libs.api.models import Vk8sStatus
from libs.events import REGISTRY, Envelope
from libs.events import catalog as ev
from services.projector import logic
from services.projector.logic import ClusterState, apply, expired, render_status, timings
from tests.unit.projector.sequence import Timeline


def fold(events: Iterable[Envelope[Any]], state: ClusterState | None = None) -> ClusterState:
    for event in events:
        state = apply(state, event)
    assert state is not None
    return state


def status_of(events: Iterable[Envelope[Any]]) -> dict[str, Any]:
    status = render_status(fold(events))
    Vk8sStatus.model_validate(status)  # what the CRD schema holds
    return status


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["readiness"] if c["type"] == type_)


def history(status: dict[str, Any]) -> list[tuple[str, str]]:
    return [(record["phase"], record["message"]) for record in status["conditions"]]


# -- every event type ---------------------------------------------------------------------------


def test_happy_path_phases_history_and_conditions() -> None:
    t = Timeline()
    events = t.happy_path()
    status = status_of(events)
    assert (status["phase"], status["message"]) == ("Running", "Running")
    assert history(status) == [
        ("Waiting", "validating request"),
        ("Waiting", "creating node"),
        ("Installing", "configuring master node"),
        ("Installing", "installing kubeflow"),
        ("Running", "Running"),
    ]
    assert [c["type"] for c in status["readiness"]] == list(logic.CONDITION_TYPES)
    assert all(c["status"] == "True" and c["observedGeneration"] == 1 for c in status["readiness"])
    assert condition(status, "Scheduled")["message"] == "vnodes placed: master on gpu-node-1, worker-0 on gpu-node-2"
    assert condition(status, "Ready")["lastTransitionTime"] == events[-1].time.isoformat().replace("+00:00", "Z")
    assert status["vnodeKubernetesSetupStatuses"] == {
        "master": {"status": "Running", "isKubernetesSetup": "Success", "message": "kubeadm-init success"},
        "worker-0": {"status": "Running", "isKubernetesSetup": "Success", "message": "kubeadm-join success"},
    }
    assert (status["observedGeneration"], status["nodes"], status["gpus"]) == (1, 2, 2)


@pytest.mark.parametrize(
    ("upto", "phase", "message", "frontier", "reason"),
    [
        (1, "Waiting", "validating request", "Scheduled", "Scheduling"),
        (2, "Waiting", "creating node", "Scheduled", "Scheduling"),
        (3, "Waiting", "creating node", "IPsAllocated", "AllocatingIPs"),
        (4, "Waiting", "creating node", "VNodesReady", "CreatingVNodes"),
        (5, "Installing", "configuring master node", "KubernetesReady", "BootstrappingKubernetes"),
        (10, "Installing", "installing kubeflow", "KubeflowReady", "InstallingKubeflow"),
    ],
)
def test_each_stage_says_what_is_awaited(upto: int, phase: str, message: str, frontier: str, reason: str) -> None:
    status = status_of(Timeline().happy_path()[:upto])
    assert (status["phase"], status["message"]) == (phase, message)
    types = list(logic.CONDITION_TYPES)
    for type_ in types[: types.index(frontier)]:
        assert condition(status, type_)["status"] == "True"
    waiting = condition(status, frontier)
    assert (waiting["status"], waiting["reason"]) == ("False", reason)
    assert waiting["message"].startswith("waiting for")
    assert condition(status, "Ready") | {"type": frontier} == waiting
    for type_ in types[types.index(frontier) + 1 : -1]:
        assert condition(status, type_)["reason"] == f"WaitingFor{frontier}"


def test_setup_progress_per_vnode() -> None:
    t = Timeline()
    events = [*t.happy_path()[:5], t.setup("master", "kubeadm-init", "Running"), t.setup("worker-0", "kubeadm-join", "Failed", message="token expired")]
    status = status_of(events)
    assert status["vnodeKubernetesSetupStatuses"] == {
        "master": {"status": "Running", "isKubernetesSetup": "", "message": "kubeadm-init running"},
        "worker-0": {
            "status": "Running",
            "isKubernetesSetup": "Failed",
            "message": "kubeadm-join failed: token expired",
        },
    }
    kubernetes = condition(status, "KubernetesReady")
    assert kubernetes["message"] == (
        "waiting for kubeadm to set up Kubernetes on the vnodes "
        "(master: kubeadm-init running, worker-0: kubeadm-join failed: token expired)"
    )
    retried = status_of([*events, t.setup("worker-0", "kubeadm-join", "Running")])
    assert retried["vnodeKubernetesSetupStatuses"]["worker-0"]["isKubernetesSetup"] == ""


def test_a_vnode_removed_from_the_spec_loses_its_status_entry() -> None:
    t = Timeline()
    events = [*t.happy_path(), t.updated(2)]
    assert set(status_of(events)["vnodeKubernetesSetupStatuses"]) == {"master", "worker-0"}

    scaled_in = [*events, t.event(ev.ClusterScheduled(generation=2, placements=t.placements()[:1]))]

    assert set(status_of(scaled_in)["vnodeKubernetesSetupStatuses"]) == {"master"}
    # A late event of the earlier generation does not bring it back.
    late = t.setup("worker-0", "kubeadm-join", "Running", generation=1)
    assert set(status_of([*scaled_in, late])["vnodeKubernetesSetupStatuses"]) == {"master"}


def test_kubeflow_progress_is_in_the_condition_not_the_history() -> None:
    t = Timeline()
    events = [*t.happy_path()[:10], t.kubeflow_progress(12), t.kubeflow_progress(20)]
    status = status_of(events)
    assert condition(status, "KubeflowReady")["message"] == (
        "waiting for Kubeflow v1.9.0: 20/30 deployments available (apply-manifests)"
    )
    assert history(status)[-1] == ("Installing", "installing kubeflow")
    assert len(status["conditions"]) == 4


def test_kubeflow_applied_but_not_available_is_said_so() -> None:
    t = Timeline()
    why = 'kubeflow/ml-pipeline: ErrImageNeverPull: Container image "ghcr.io/kubeflow/ml-pipeline:2.5" is not present'
    events = [*t.happy_path()[:-1], t.ready(unavailable=(why,))]
    status = status_of(events)
    assert status["phase"] == "Running"
    assert status["message"] == "Running; Kubeflow v1.9.0 applied, 1 deployments not available"
    kubeflow = condition(status, "KubeflowReady")
    assert (kubeflow["status"], kubeflow["reason"]) == ("False", "DeploymentsUnavailable")
    assert kubeflow["message"] == f"Kubeflow applied; not available: {why}"
    assert condition(status, "Ready")["status"] == "True"


def test_unschedulable_is_pending_with_the_reasons_then_scheduled() -> None:
    t = Timeline()
    events = [t.accepted(), t.unschedulable(), t.unschedulable(reason="needs A100, none free")]
    status = status_of(events)
    assert status["phase"] == "Pending"
    assert status["message"] == "unschedulable: no host node fits (worker-0: needs A100, none free)"
    scheduled = condition(status, "Scheduled")
    assert (scheduled["reason"], scheduled["message"]) == (
        "Unschedulable",
        "waiting for capacity: no host node fits (worker-0: needs A100, none free)",
    )
    assert condition(status, "Ready")["reason"] == "Unschedulable"
    later = status_of([*events, t.scheduled()])
    assert history(later) == [
        ("Waiting", "creating node"),
        ("Pending", "unschedulable: no host node fits (worker-0: needs 1 GPU, 0 free)"),
        ("Pending", "unschedulable: no host node fits (worker-0: needs A100, none free)"),
        ("Waiting", "creating node"),
    ]


def test_failure_names_the_stage_and_holds_until_a_newer_generation() -> None:
    t = Timeline()
    events = [*t.happy_path()[:6], t.failed("bootstrap", "kubeadm init exited 1")]
    status = status_of(events)
    assert (status["phase"], status["message"]) == ("Failed", "bootstrap: kubeadm init exited 1")
    kubernetes = condition(status, "KubernetesReady")
    assert (kubernetes["status"], kubernetes["reason"], kubernetes["message"]) == (
        "False",
        "StepFailed",
        "bootstrap: kubeadm init exited 1",
    )
    assert condition(status, "VNodesReady")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "StepFailed"
    # Work of the failed run that was still in flight does not revive it.
    stale = status_of([*events, t.kubernetes_ready(), t.ready()])
    assert stale["phase"] == "Failed"
    assert (stale["readiness"], stale["conditions"]) == (status["readiness"], status["conditions"])
    retried = status_of([*events, t.updated(2)])
    assert (retried["phase"], retried["message"], retried["observedGeneration"]) == ("Waiting", "creating node", 2)


def test_failure_without_generation_and_odd_reason() -> None:
    t = Timeline()
    status = status_of([t.accepted(), t.failed("scheduler", "bad message", generation=None, reason="invalid event")])
    assert status["phase"] == "Failed"
    assert condition(status, "Scheduled")["reason"] == "InvalidEvent"


def test_rejected_request() -> None:
    t = Timeline()
    status = status_of([t.requested(), t.rejected("spec.nodes[0].name: bad", "spec.kubeflow: unknown")])
    assert (status["phase"], status["message"]) == (
        "Failed",
        "request rejected: spec.nodes[0].name: bad; spec.kubeflow: unknown",
    )
    assert condition(status, "Ready")["reason"] == "Rejected"
    assert "observedGeneration" not in status


def test_pause_and_resume() -> None:
    t = Timeline()
    running = t.happy_path()
    pausing = [*running, t.updated(1, paused=True)]
    assert (status_of(pausing)["phase"], status_of(pausing)["message"]) == ("Paused", "stopping vnodes")
    paused = [*pausing, t.paused()]
    status = status_of(paused)
    assert (status["phase"], status["message"]) == ("Paused", "paused")
    assert {c["reason"] for c in status["readiness"]} == {"Paused"}
    resumed = status_of([*paused, t.updated(1), t.scheduled()])
    assert (resumed["phase"], resumed["message"]) == ("Waiting", "creating node")
    assert history(resumed)[-3:] == [("Paused", "stopping vnodes"), ("Paused", "paused"), ("Waiting", "creating node")]


def test_a_late_paused_of_a_superseded_pause_does_not_pause_a_resumed_cluster() -> None:
    """Pause, resume quickly: the vnode stage's answer to the pause can come after the resume (as
    in a chaos run); the cluster then goes on to Running, not back to Paused for good."""
    t = Timeline()
    events = [*t.happy_path(), t.updated(1, paused=True), t.updated(1), t.paused(), t.scheduled(), t.ips_allocated()]
    events += [t.vnodes_ready(), t.kubernetes_ready(), t.ready()]
    status = status_of(events)
    assert (status["phase"], status["message"]) == ("Running", "Running")


def test_label_change_of_a_running_cluster_keeps_it_running() -> None:
    t = Timeline()
    status = status_of([*t.happy_path(), t.updated(1)])
    assert status["phase"] == "Running"


def test_deletion() -> None:
    t = Timeline()
    events = [*t.happy_path(), t.delete_requested(), t.vnodes_deleted(), t.ips_released()]
    status = status_of(events)
    assert (status["phase"], status["message"]) == ("Deleting", "releasing GPU reservations")
    assert {c["reason"] for c in status["readiness"]} == {"Deleting"}
    assert history(status)[-3:] == [
        ("Deleting", "deleting vnodes"),
        ("Deleting", "releasing vnode IPs"),
        ("Deleting", "releasing GPU reservations"),
    ]
    done = status_of([*events, t.deleted()])
    assert (done["phase"], done["message"]) == ("Deleting", "deleted")


def test_a_cluster_expires_a_retention_after_it_was_deleted_not_before_nor_while_deleting() -> None:
    t = Timeline()
    deleting = fold([*t.happy_path(), t.delete_requested(), t.vnodes_deleted()])
    deleted_event = t.deleted()
    deleted = fold([deleted_event], deleting)
    hour = timedelta(hours=1)
    later = deleted_event.time + hour
    assert expired(deleted, later, hour)
    assert not expired(deleted, later - timedelta(seconds=1), hour)
    assert not expired(deleting, later + hour, hour)
    assert not expired(fold(t.happy_path()), later + hour, hour)
    # A new object of the same name after the deletion: its record is no longer the deleted one's.
    new = Timeline(uid="11111111-2222-3333-4444-555555555555", start=later)
    new._count = 100
    assert not expired(fold([new.requested()], deleted), later + hour, hour)


def test_failed_deletion_is_shown_until_deletion_moves_on() -> None:
    t = Timeline()
    events = [*t.happy_path(), t.delete_requested(), t.failed("vnode", "statefulset stuck", generation=None)]
    status = status_of(events)
    assert (status["phase"], status["message"]) == ("Failed", "deletion failed: vnode: statefulset stuck")
    assert status_of([*events, t.vnodes_deleted()])["phase"] == "Deleting"


def test_a_new_object_of_the_same_name_starts_over() -> None:
    old = Timeline()
    events = [*old.happy_path(), old.delete_requested(), old.deleted()]
    new = Timeline(uid="11111111-2222-3333-4444-555555555555", start=events[-1].time + timedelta(minutes=5))
    new._count = 100  # distinct event ids
    status = status_of([*events, new.accepted()])
    assert (status["phase"], status["message"]) == ("Waiting", "creating node")
    assert history(status) == [("Waiting", "creating node")]  # the old object's history is not its
    assert status["vnodeKubernetesSetupStatuses"] == {}


def test_no_kubeflow_asked_for() -> None:
    t = Timeline()
    events = [t.accepted(kubeflow=False), t.scheduled(), t.ips_allocated(), t.vnodes_ready(), t.kubernetes_ready()]
    status = status_of(events)
    assert (status["phase"], status["message"]) == ("Installing", "finishing cluster setup")
    assert condition(status, "KubeflowReady")["reason"] == "NotRequested"
    assert condition(status, "Ready")["reason"] == "FinishingSetup"
    done = status_of([*events, t.ready(release=None)])
    assert done["phase"] == "Running"
    assert condition(done, "Ready")["status"] == "True"


def one_of_each(t: Timeline) -> list[Envelope[Any]]:
    return [
        *t.happy_path(),
        t.rejected("spec: bad"),
        t.updated(1, paused=True),
        t.paused(),
        t.unschedulable(),
        t.failed("vnode", "boom"),
        t.delete_requested(),
        t.vnodes_deleted(),
        t.ips_released(),
        t.deleted(),
    ]


def test_every_event_type_alone_and_together_renders_a_valid_status() -> None:
    events = one_of_each(Timeline())
    assert {event.type for event in events} == set(REGISTRY.subjects())
    for event in events:
        status_of([event])
    assert status_of(events)["phase"] == "Deleting"


# -- redelivery, order, compaction --------------------------------------------------------------


def full_story(t: Timeline) -> list[Envelope[Any]]:
    """Unschedulable first, a spec update to generation 2 mid-way, pause and resume, then ready."""
    return [
        t.requested(),
        t.accepted(),
        t.unschedulable(),
        t.scheduled(),
        t.ips_allocated(),
        t.vnodes_ready(),
        t.setup("master", "kubeadm-init", "Running"),
        t.updated(2),
        t.scheduled(2),
        t.ips_allocated(2),
        t.vnodes_ready(2),
        t.setup("master", "kubeadm-init", "Success", generation=2),
        t.setup("worker-0", "kubeadm-join", "Failed", generation=2, message="timeout"),
        t.setup("worker-0", "kubeadm-join", "Success", generation=2),
        t.kubernetes_ready(2),
        t.kubeflow_progress(5, generation=2),
        t.ready(2),
        t.updated(2, paused=True),
        t.paused(2),
        t.updated(2),
        t.scheduled(2),
        t.ips_allocated(2),
        t.vnodes_ready(2),
        t.kubernetes_ready(2),
        t.ready(2),
    ]


def test_redelivery_changes_nothing() -> None:
    events = Timeline().happy_path()
    once = fold(events)
    twice = fold(events, once)
    assert twice is once
    interleaved = fold(event for event in events for _ in range(3))
    assert render_status(interleaved) == render_status(once)
    # A redelivery re-stamped with a later time is still the same event.
    late_copy = events[2].model_copy(update={"time": events[-1].time + timedelta(hours=1)})
    assert apply(once, late_copy) is once


def test_every_order_of_a_short_story_renders_the_same_status() -> None:
    t = Timeline()
    events = [t.accepted(), t.scheduled(), t.ips_allocated(), t.vnodes_ready(), t.kubernetes_ready(), t.ready()]
    expected = status_of(events)
    for order in itertools.permutations(events):
        assert render_status(fold(order)) == expected


def test_random_orders_with_duplicates_render_the_same_status() -> None:
    events = full_story(Timeline())
    expected = status_of(events)
    assert (expected["phase"], expected["observedGeneration"]) == ("Running", 2)
    rng = random.Random(20261128)
    for _ in range(100):
        shuffled = events + rng.sample(events, 8)  # redeliveries
        rng.shuffle(shuffled)
        assert render_status(fold(shuffled)) == expected


def test_history_has_each_change_once_in_event_time_order() -> None:
    events = full_story(Timeline())
    status = status_of(reversed(events + events))
    times = [record["lastProbeTime"] for record in status["conditions"]]
    assert times == sorted(times)
    pairs = history(status)
    assert all(a != b for a, b in itertools.pairwise(pairs))
    assert pairs == history(status_of(events))


PROGRESS_ORDER = [
    ("Waiting", "validating request"),
    ("Waiting", "creating node"),
    ("Installing", "configuring master node"),
    ("Installing", "installing kubeflow"),
    ("Running", "Running"),
]


def test_phase_never_goes_backwards_when_events_arrive_out_of_order() -> None:
    events = Timeline().happy_path()
    rng = random.Random(7)
    for _ in range(60):
        shuffled = events + rng.sample(events, 4)
        rng.shuffle(shuffled)
        state: ClusterState | None = None
        reached = -1
        for event in shuffled:
            state = apply(state, event)
            status = render_status(state)
            position = PROGRESS_ORDER.index((status["phase"], status["message"]))
            assert position >= reached
            reached = max(reached, position)
        assert (status["phase"], status["message"]) == ("Running", "Running")


def test_late_events_of_an_older_generation_are_ignored() -> None:
    t = Timeline()
    events = [*t.happy_path()[:5], t.updated(2)]
    late_old = [t.kubernetes_ready(1), t.ready(1)]  # stamped after the update
    status = status_of(events + late_old)
    assert (status["phase"], status["message"], status["observedGeneration"]) == ("Waiting", "creating node", 2)
    assert condition(status, "Ready")["observedGeneration"] == 2


def test_a_late_stage_event_does_not_pull_a_run_back() -> None:
    t = Timeline()
    events = t.happy_path()
    straggler = t.kubeflow_progress(29)  # stamped after cluster.ready
    status = status_of([*events, straggler])
    assert status["phase"] == "Running"


def test_compaction_keeps_the_same_status(monkeypatch: pytest.MonkeyPatch) -> None:
    t = Timeline()
    events = [*t.happy_path()[:10], *(t.kubeflow_progress(i) for i in range(20)), t.ready()]
    unbounded = status_of(events)
    monkeypatch.setattr(logic, "FACT_LIMIT", 5)
    state = fold(events)
    assert len(state.facts) == 5
    assert state.horizon is not None
    assert render_status(state) == unbounded
    # Redelivered or late events from before the compacted horizon change nothing.
    assert apply(state, events[3]) is state


def test_timings_follow_the_stages() -> None:
    events = Timeline().happy_path()
    found = sorted((timing.stage, timing.seconds) for timing in timings(fold(events)).values())
    assert found == [
        ("admission", 1.0),
        ("ip_allocation", 1.0),
        ("kubeflow", 3.0),
        ("kubernetes", 5.0),
        ("running", 11.0),
        ("scheduling", 1.0),
        ("vnodes", 1.0),
    ]
    reversed_state = fold(reversed(events))
    assert timings(reversed_state) == timings(fold(events))


def test_a_fact_of_another_uid_after_deletion_starts_a_new_object() -> None:
    old = Timeline()
    events = [*old.happy_path(), old.delete_requested(), old.deleted()]
    new = Timeline(uid="11111111-2222-3333-4444-555555555555", start=events[-1].time + timedelta(minutes=1))
    new._count = 100
    update = new.updated(1)  # its cluster.accepted is not in (yet)
    status = status_of([*events, update])
    assert (status["phase"], status["message"]) == ("Waiting", "creating node")
    # A late fact of the old object does not reach the new one.
    straggler = old.event(old.ips_released().data, at=update.time + timedelta(minutes=1))
    assert status_of([*events, update, straggler]) == status

"""The gateway's decisions: observed object + ledger record -> events; request + live object -> answer."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import pytest

from libs.events import Envelope
from libs.events.catalog import ClusterRequested
from libs.kube import FINALIZER
from libs.kube.vnodes import CLUSTER_UID_LABEL, TENANT_NAMESPACE_LABEL, cluster_labels
from services.gateway import logic
from services.gateway.logic import (
    PAUSED_ANNOTATION,
    REQUEST_ID_ANNOTATION,
    Action,
    ClusterRecord,
    Observed,
    Verdict,
)
from tests.support.events import NOW, cluster_requested, spec_document

UID = "0b9a6c1e-5f0e-4d38-9a51-3c6a2f1d7e01"
PASSWORD = "s3cret-Pa55"


def vk8s(
    *,
    generation: int = 1,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    finalizers: tuple[str, ...] = (FINALIZER,),
    deleting: bool = False,
    spec: dict[str, Any] | None = None,
    uid: str = UID,
    created: datetime | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "team-a",
        "namespace": "default",
        "uid": uid,
        "generation": generation,
        "resourceVersion": "7",
        "labels": labels or {},
        "annotations": annotations or {},
        "finalizers": list(finalizers),
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-28T12:00:00Z"
    if created is not None:
        metadata["creationTimestamp"] = created.isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "vk8s.skt.co.kr/v1alpha1",
        "kind": "Vk8s",
        "metadata": metadata,
        "spec": spec if spec is not None else spec_document(),
    }


def observed(**kwargs: Any) -> Observed:
    return Observed.of(vk8s(**kwargs))


def incompatible_spec() -> dict[str, Any]:
    spec = spec_document()
    spec["kubeflow"]["version"] = "v1.4.0"
    return spec


def plain_password_spec() -> dict[str, Any]:
    spec = spec_document()
    del spec["kubeflow"]["passwordSecretRef"]
    spec["kubeflow"]["password"] = PASSWORD
    return spec


def record(**kwargs: Any) -> ClusterRecord:
    return ClusterRecord(uid=UID, cluster_id="default/team-a", **kwargs)


def accepted_record(generation: int = 1, **kwargs: Any) -> ClusterRecord:
    return logic.record_published(None, observed(generation=generation, **kwargs), accepted=True)


RESYNC = timedelta(minutes=10)


def plan(obj: Observed, rec: ClusterRecord | None, now: datetime = NOW) -> logic.ObjectPlan:
    return logic.plan_for_object(obj, rec, host_cidrs=(), now=now, delete_resync=RESYNC)


# --- observing ---------------------------------------------------------------------------------------


def test_observed_leaves_out_kubectls_copy_of_the_manifest() -> None:
    obj = vk8s(annotations={"kubectl.kubernetes.io/last-applied-configuration": '{"password": "x"}', "team": "a"})
    assert Observed.of(obj).annotations == {"team": "a"}


def test_metadata_hash_follows_labels_and_annotations() -> None:
    base = observed().metadata_hash
    assert observed(labels={"tier": "gold"}).metadata_hash != base
    assert observed(annotations={PAUSED_ANNOTATION: ""}).metadata_hash != base
    assert observed(generation=2).metadata_hash == base


# --- the watch ---------------------------------------------------------------------------------------


def test_an_object_made_for_a_nats_request_is_left_to_that_request_for_its_grace() -> None:
    """The request's handler accepts it: the watch asking as well only put a second cluster.requested
    in the stream. Once the grace is over with nothing recorded, the request failed: the watch asks."""
    made = observed(annotations={REQUEST_ID_ANNOTATION: "req-1"}, created=NOW)
    waiting = plan(made, None, now=NOW + timedelta(seconds=5))
    assert (waiting.action, waiting.event, waiting.recheck_at) == (Action.AWAIT_REQUEST, None, NOW + timedelta(seconds=30))
    assert plan(made, None, now=NOW + timedelta(seconds=30)).action is Action.REQUEST
    # Without the annotation (kubectl), or once the request's handler recorded it, the usual rules.
    assert plan(observed(created=NOW), None, now=NOW).action is Action.REQUEST
    assert plan(made, record(), now=NOW).action is Action.REQUEST


def test_new_object_is_requested_with_uid_and_generation() -> None:
    result = plan(observed(labels={"team": "a"}), None)
    assert result.action is Action.REQUEST
    event = result.event
    assert event is not None and event.type == "cluster.requested"
    assert event.id == f"requested-{UID}-1"
    assert event.cluster_id == "default/team-a"
    assert (event.data.uid, event.data.generation, event.data.labels) == (UID, 1, {"team": "a"})


def test_requested_object_waits_for_acceptance_even_when_its_labels_change() -> None:
    requested = logic.record_published(None, observed(), accepted=False)
    assert plan(observed(labels={"team": "b"}), requested).action is Action.NONE


def test_new_generation_before_acceptance_is_requested_again() -> None:
    requested = logic.record_published(None, observed(), accepted=False)
    result = plan(observed(generation=2), requested)
    assert result.action is Action.REQUEST and result.event is not None
    assert result.event.id == f"requested-{UID}-2"


def test_accepted_object_without_changes_publishes_nothing() -> None:
    assert plan(observed(labels={"team": "a"}), accepted_record(labels={"team": "a"})).action is Action.NONE


@pytest.mark.parametrize(
    ("change", "paused"),
    [
        ({"generation": 2}, False),
        ({"labels": {"team": "b"}}, False),
        ({"annotations": {PAUSED_ANNOTATION: "true"}}, True),
    ],
)
def test_changes_after_acceptance_are_updates(change: dict[str, Any], paused: bool) -> None:
    changed = observed(**change)
    result = plan(changed, accepted_record())
    assert result.action is Action.UPDATE and result.event is not None
    assert result.event.type == "cluster.updated"
    assert result.event.id == f"updated-{UID}-{changed.generation}-1"
    assert result.change == 1
    assert result.event.data.generation == changed.generation
    assert result.event.data.paused is paused


def test_each_change_has_an_id_of_its_own_and_a_retry_the_same() -> None:
    """Pause, resume, pause, resume: the same object states again, each a change of its own (the
    broker would drop a repeated id as a duplicate and lose the second pause)."""
    paused, running = observed(annotations={PAUSED_ANNOTATION: "true"}), observed()
    current, ids = accepted_record(), []
    for state in (paused, running, paused, running):
        result = plan(state, current)
        assert result.action is Action.UPDATE and result.event is not None
        assert plan(state, current).event == result.event  # before the record is written: same id
        ids.append(result.event.id)
        current = logic.record_published(current, state, accepted=True, change=result.change)
    assert ids == [f"updated-{UID}-1-{number}" for number in (1, 2, 3, 4)]
    assert plan(running, current).action is Action.NONE


def test_invalid_new_object_is_rejected_naming_the_field() -> None:
    result = plan(observed(spec=incompatible_spec()), None)
    assert result.action is Action.REJECT and result.event is not None
    assert result.event.type == "cluster.rejected"
    assert any(problem.startswith("spec.kubeflow.version:") for problem in result.event.data.problems)


def test_spec_that_does_not_parse_is_rejected_naming_the_field() -> None:
    spec = spec_document()
    spec["nodes"][0]["role"] = "boss"
    result = plan(observed(spec=spec), None)
    assert result.action is Action.REJECT and result.event is not None
    assert any(problem.startswith("spec.nodes[0].role:") for problem in result.event.data.problems)


def test_rejected_generation_keeps_the_accepted_one_and_is_not_repeated() -> None:
    invalid = observed(generation=2, spec=incompatible_spec())
    result = plan(invalid, accepted_record())
    assert result.action is Action.REJECT
    after = logic.record_published(accepted_record(), invalid, accepted=False)
    assert (after.accepted_generation, after.announced_generation) == (1, 2)
    assert plan(invalid, after).action is Action.NONE


def test_host_networks_are_checked() -> None:
    result = logic.plan_for_object(
        observed(), None, host_cidrs=("90.244.0.0/16",), now=NOW, delete_resync=RESYNC
    )
    assert result.action is Action.REJECT and result.event is not None
    assert any("podNetworkCidr" in problem for problem in result.event.data.problems)


def test_plain_password_is_published_as_a_secret_reference() -> None:
    result = plan(observed(spec=plain_password_spec()), None)
    assert result.action is Action.REQUEST and result.event is not None and result.assessment is not None
    assert result.assessment.password is not None
    assert result.assessment.password.get_secret_value() == PASSWORD
    kubeflow = result.event.data.spec.kubeflow
    assert kubeflow.password is None
    assert (kubeflow.password_secret_ref.name, kubeflow.password_secret_ref.key) == ("team-a-kubeflow-user", "password")
    assert PASSWORD.encode() not in result.event.to_json()
    assert any(w.path == "spec.kubeflow.password" for w in result.assessment.warnings)
    assert PASSWORD not in " ".join(str(w) for w in result.assessment.warnings)


def test_deletion_of_accepted_object_requests_cleanup_once() -> None:
    result = plan(observed(deleting=True), accepted_record())
    assert result.action is Action.DELETE and result.event is not None
    assert result.event.type == "cluster.delete.requested"
    assert result.event.id == f"delete-requested-{UID}"
    assert result.event.data.uid == UID
    requested = logic.record_delete_requested(accepted_record(), NOW)
    assert plan(observed(deleting=True), requested).action is Action.NONE
    assert plan(observed(deleting=True), requested, NOW + RESYNC - timedelta(seconds=1)).action is Action.NONE


def test_a_deletion_still_held_past_the_resync_is_requested_again_with_an_id_of_its_own() -> None:
    requested = logic.record_delete_requested(accepted_record(), NOW)
    later = NOW + RESYNC

    again = plan(observed(deleting=True), requested, later)

    assert again.action is Action.DELETE and again.event is not None
    assert again.event.id == f"delete-requested-{UID}-resync-1"
    assert again.event.data.uid == UID
    twice = logic.record_delete_requested(requested, later)
    assert plan(observed(deleting=True), twice, later + timedelta(minutes=5)).action is Action.NONE
    third = plan(observed(deleting=True), twice, later + RESYNC).event
    assert third is not None and third.id == f"delete-requested-{UID}-resync-2"
    # A record from a version that did not note the time: requested again at once, then timed.
    untimed = accepted_record().model_copy(update={"delete_requested": True})
    assert plan(observed(deleting=True), untimed).action is Action.DELETE


@pytest.mark.parametrize("rec", [None, record(announced_generation=1)])
def test_deletion_of_never_provisioned_object_releases_it(rec: ClusterRecord | None) -> None:
    assert plan(observed(deleting=True), rec).action is Action.RELEASE


def test_deletion_without_finalizer_or_record_is_none_of_ours() -> None:
    assert plan(observed(deleting=True, finalizers=("other/finalizer",)), None).action is Action.NONE


def test_gone_objects() -> None:
    accepted = accepted_record()
    gone = logic.plan_for_gone(accepted, now=NOW, delete_resync=RESYNC)
    assert gone.action is Action.DELETE and gone.event is not None
    assert gone.event.id == f"delete-requested-{UID}"
    requested = logic.record_delete_requested(accepted, NOW)
    assert logic.plan_for_gone(requested, now=NOW, delete_resync=RESYNC).action is Action.NONE
    assert logic.plan_for_gone(requested, now=NOW + RESYNC, delete_resync=RESYNC).action is Action.DELETE
    assert logic.plan_for_gone(record(announced_generation=1), now=NOW, delete_resync=RESYNC).action is Action.FORGET


def test_record_never_moves_back() -> None:
    newer = logic.record_published(None, observed(generation=3, labels={"v": "3"}), accepted=True)
    after = logic.record_published(newer, observed(generation=2), accepted=True)
    assert after == newer


# --- cluster.requested -------------------------------------------------------------------------------


def user_request(spec: dict[str, Any] | None = None) -> Envelope[ClusterRequested]:
    request = cluster_requested() if spec is None else ClusterRequested.model_validate(
        {"name": "team-a", "namespace": "default", "spec": spec}
    )
    return Envelope.new(request, cluster_id="default/team-a", now=NOW, event_id="user-request-1")


def created_for(cause: Envelope[ClusterRequested], **metadata: Any) -> Observed:
    """The object the gateway creates for `cause`, as the apiserver returns it."""
    obj = copy.deepcopy(logic.object_for_request(cause))
    obj["metadata"].update(uid=UID, generation=1, resourceVersion="1", **metadata)
    return Observed.of(obj)


def judge(
    cause: Envelope[ClusterRequested], live: Observed | None, rec: ClusterRecord | None = None
) -> logic.RequestPlan:
    return logic.judge_request(cause, live, rec, host_cidrs=(), now=NOW)


def test_object_for_request_carries_the_finalizer_and_request_id_and_parses_back_to_the_request() -> None:
    cause = user_request()
    obj = logic.object_for_request(cause)
    assert obj["metadata"]["finalizers"] == [FINALIZER]
    assert obj["metadata"]["annotations"][REQUEST_ID_ANNOTATION] == cause.id
    # What convergence rests on: the object made from a request reads back as the same spec.
    assessment = logic.assess(created_for(cause).document(), (), None)
    assert assessment.spec == cause.data.spec


def test_request_for_the_object_made_for_it_is_accepted_following_the_request() -> None:
    cause = user_request()
    result = judge(cause, created_for(cause))
    assert result.verdict is Verdict.ACCEPT and result.event is not None
    event = result.event
    assert event.type == "cluster.accepted"
    assert event.id == f"accepted-{UID}-1"
    assert (event.causation_id, event.correlation_id) == (cause.id, cause.correlation_id)
    assert (event.data.uid, event.data.generation) == (UID, 1)
    assert event.data.annotations[REQUEST_ID_ANNOTATION] == cause.id


def test_object_and_nats_request_for_the_same_cluster_get_the_same_accepted_id() -> None:
    applied = observed()
    from_watch = plan(applied, None).event
    assert from_watch is not None
    via_watch = judge(from_watch, applied)
    via_nats = judge(user_request(), applied)
    assert via_watch.verdict is via_nats.verdict is Verdict.ACCEPT
    assert via_watch.event is not None and via_nats.event is not None
    assert via_watch.event.id == via_nats.event.id == f"accepted-{UID}-1"
    assert via_watch.event.data == via_nats.event.data


def test_request_conflicting_with_an_existing_object_is_rejected() -> None:
    result = judge(user_request(spec_document(gpus=2)), observed())
    assert result.verdict is Verdict.REJECT and result.event is not None
    assert result.event.data.request_id == "user-request-1"
    assert "exists already" in result.event.data.problems[0]


def test_request_for_a_recreated_object_is_rejected() -> None:
    stale = plan(observed(uid="11111111-2222-3333-4444-555555555555"), None)
    assert stale.event is not None
    result = judge(stale.event, observed())
    assert result.verdict is Verdict.REJECT and result.event is not None
    assert UID in result.event.data.problems[0]


def test_request_whose_object_is_gone_is_dropped() -> None:
    from_watch = plan(observed(), None).event
    assert from_watch is not None
    assert judge(from_watch, None).verdict is Verdict.DROP


def test_request_for_an_object_being_deleted() -> None:
    from_watch = plan(observed(), None).event
    assert from_watch is not None
    assert judge(from_watch, observed(deleting=True)).verdict is Verdict.DROP
    result = judge(user_request(), observed(deleting=True))
    assert result.verdict is Verdict.REJECT and result.event is not None
    assert "being deleted" in result.event.data.problems[0]


def test_cluster_is_accepted_once() -> None:
    from_watch = plan(observed(), None).event
    assert from_watch is not None
    assert judge(from_watch, observed(), accepted_record()).verdict is Verdict.ALREADY_ACCEPTED
    assert judge(user_request(), observed(), accepted_record()).verdict is Verdict.ALREADY_ACCEPTED


def test_accepting_validates_the_live_object() -> None:
    from_watch = plan(observed(), None).event
    assert from_watch is not None
    result = judge(from_watch, observed(generation=2, spec=incompatible_spec()))
    assert result.verdict is Verdict.REJECT and result.event is not None
    assert any(problem.startswith("spec.kubeflow.version:") for problem in result.event.data.problems)


def test_request_problems_name_the_field() -> None:
    problems = logic.request_problems(user_request(incompatible_spec()).data, ())
    assert any(problem.startswith("data.spec.kubeflow.version:") for problem in problems), problems
    assert logic.request_problems(user_request().data, ()) == ()


def test_gateway_serving_one_namespace_rejects_requests_for_others() -> None:
    problems = logic.request_problems(user_request().data, (), "team-ns")
    assert problems == ("data.namespace: this gateway serves namespace 'team-ns' only, not 'default'",)
    assert logic.request_problems(user_request().data, (), "default") == ()


# --- failures -----------------------------------------------------------------------------------------


def test_a_failing_object_reports_when_it_is_tried_again() -> None:
    status = logic.reconcile_status("Invalid", "Secret is immutable", 3, NOW, 2.0)
    assert status == {
        "reason": "Invalid",
        "message": "Secret is immutable",
        "attempts": 3,
        "lastAttemptTime": "2026-11-28T12:00:00Z",
        "nextAttemptTime": "2026-11-28T12:00:02Z",
    }


def test_a_status_change_alone_is_not_a_change_to_reconcile() -> None:
    assert observed().change_key == observed().change_key
    assert observed(generation=2).change_key != observed().change_key
    assert observed(labels={"tier": "gold"}).change_key != observed().change_key
    assert observed(deleting=True).change_key != observed().change_key


def test_a_deletion_after_a_crash_between_accepting_and_recording_runs_the_delete_chain() -> None:
    """cluster.accepted may have gone out (the record says only that it was about to): the object's
    deletion, or its absence, requests cleanup instead of releasing it quietly."""
    accepting = logic.record_accepting(None, observed())
    assert not accepting.accepted and accepting.maybe_accepted
    deleting = plan(observed(deleting=True), accepting)
    assert deleting.action is Action.DELETE and deleting.event is not None
    assert deleting.event.id == f"delete-requested-{UID}"
    assert logic.plan_for_gone(accepting, now=NOW, delete_resync=RESYNC).action is Action.DELETE
    assert plan(observed(deleting=True), record(announced_generation=1)).action is Action.RELEASE


# --- quotas ----------------------------------------------------------------------------------------


def spec_with(gpus: int) -> Any:
    return Envelope.new(cluster_requested(gpus=gpus), cluster_id="default/team-a", now=NOW).data.spec


def holdings(**gpus: int) -> logic.Holdings:
    return logic.Holdings(gpus=gpus)


@pytest.mark.parametrize(
    ("gpus", "held", "expected"),
    [
        (1, holdings(a=1), holdings(a=1, u=1)),
        (1, holdings(a=1, b=0), (
            "metadata.namespace: namespace 'default' already has 2 clusters; quota maxClustersPerNamespace is 2",
        )),
        (4, holdings(a=5), (
            "spec.nodes: the cluster asks for 4 GPUs and namespace 'default' holds 5 in other clusters; "
            "quota maxGpusPerNamespace is 8",
        )),
        (3, holdings(a=5), holdings(a=5, u=3)),
        # a cluster already held is not counted twice, and keeps what it has when the limits shrink
        (1, holdings(a=4, b=4, u=1), holdings(a=4, b=4, u=1)),
        (0, holdings(a=4, b=4, u=1), holdings(a=4, b=4, u=0)),
        (2, holdings(a=7, u=1), (
            "spec.nodes: the cluster asks for 2 GPUs and namespace 'default' holds 7 in other clusters; "
            "quota maxGpusPerNamespace is 8",
        )),
    ],
)  # fmt: skip
def test_quotas_refuse_growth_beyond_the_limits(gpus: int, held: logic.Holdings, expected: Any) -> None:
    outcome = logic.take_quota(held, "default", "u", spec_with(gpus), max_clusters=2, max_gpus=8)
    assert (tuple(map(str, outcome)) if isinstance(outcome, tuple) else outcome) == expected
    unlimited = logic.take_quota(held, "default", "u", spec_with(gpus), max_clusters=None, max_gpus=None)
    assert unlimited == logic.Holdings(gpus={**held.gpus, "u": gpus})


def test_releasing_the_last_cluster_forgets_the_namespace() -> None:
    assert logic.release_quota(holdings(a=1, u=2), "u") == holdings(a=1)
    assert logic.release_quota(holdings(u=2), "u") is None
    assert logic.release_quota(None, "u") is None


def test_only_the_namespace_labelled_as_this_clusters_is_its_platform_namespace() -> None:
    own = cluster_labels("team-a", "demo", UID)
    assert logic.foreign_platform_namespace(own, "team-a", "demo", UID) == ""
    assert logic.foreign_platform_namespace({**own, "extra": "x"}, "team-a", "demo", UID) == ""
    assert logic.foreign_platform_namespace(None, "team-a", "demo", UID) == (
        f"app missing, clusterName missing, {CLUSTER_UID_LABEL} missing, {TENANT_NAMESPACE_LABEL} missing"
    )
    other_uid = {**own, CLUSTER_UID_LABEL: "another"}
    assert logic.foreign_platform_namespace(other_uid, "team-a", "demo", UID) == f"{CLUSTER_UID_LABEL}=another"
    # The same uid under another tenant's name is not it either.
    assert logic.foreign_platform_namespace(own, "team-b", "demo", UID) == f"{TENANT_NAMESPACE_LABEL}=team-a"


def test_a_tenant_namespace_is_neither_reserved_nor_missing_nor_a_platform_namespace() -> None:
    reserved = ("kube-system", "vk8s-system")
    assert logic.tenant_namespace_problem("team-a", {"team": "a"}, reserved) is None
    assert logic.tenant_namespace_problem("team-a", {}, reserved) is None
    assert logic.tenant_namespace_problem("vk8s-system", {}, reserved) == (
        "namespace 'vk8s-system' is reserved for the host cluster; virtual clusters are made in tenant namespaces"
    )
    # Reserved whether or not it exists; a missing one is said to be missing.
    assert "reserved" in (logic.tenant_namespace_problem("kube-system", None, reserved) or "")
    assert logic.tenant_namespace_problem("gone", None, reserved) == "namespace 'gone' does not exist; create it first"
    platform = logic.tenant_namespace_problem("vk8s-team-a-demo-1a2b", cluster_labels("team-a", "demo", UID), reserved)
    assert platform == (
        "namespace 'vk8s-team-a-demo-1a2b' is the platform namespace of a virtual cluster; "
        "virtual clusters are made in tenant namespaces"
    )

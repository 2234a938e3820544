"""The event contract: registry round trip, JSON Schemas, derived ids, no passwords on the bus."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from libs.api.models import Vk8sSpec
from libs.api.validation import validate_document
from libs.events import EVENTS, REGISTRY, Envelope, InvalidEvent, Payload, Registry
from libs.events import catalog as c
from tests.support.events import NOW, cluster_requested, spec_document
from vk8s.cli import main

SPEC = Vk8sSpec.model_validate(spec_document(gpus=2, workers=1))
PLACEMENTS = [
    c.VNodePlacement(vnode="master", role="master", host_node="node-1", gpus=2, gpu_model="A100", zone="zone-a"),
    c.VNodePlacement(vnode="worker-0", role="worker", host_node="node-2", gpus=2),
]
VNODES = [
    c.VNodeRef(vnode="master", role="master", pod="master-0", host_node="node-1", ip="10.200.0.2", gpus=2),
]
SAMPLES: dict[type[Payload], Payload] = {
    c.ClusterRequested: cluster_requested(),
    c.ClusterAccepted: c.ClusterAccepted(name="team-a", spec=SPEC, uid="uid-1", generation=1),
    c.ClusterRejected: c.ClusterRejected(request_id="r-1", problems=["data.name: field required"]),
    c.ClusterUpdated: c.ClusterUpdated(name="team-a", spec=SPEC, uid="uid-1", generation=2, paused=True),
    c.ClusterDeleteRequested: c.ClusterDeleteRequested(uid="uid-1"),
    c.ClusterScheduled: c.ClusterScheduled(generation=1, placements=PLACEMENTS),
    c.ClusterUnschedulable: c.ClusterUnschedulable(
        generation=1,
        message="1 of 2 vNodes does not fit",
        vnodes=[c.VNodeUnschedulable(vnode="worker-0", reason="needs 4 nvidia.com/gpu; the most free on one node is 2")],
    ),
    c.ClusterIPsAllocated: c.ClusterIPsAllocated(
        generation=1,
        vnode_ips={"master": "10.200.0.2"},
        pod_cidr="90.244.0.0/16",
        service_cidr="90.96.0.0/12",
        placements=PLACEMENTS,
    ),
    c.ClusterVNodesReady: c.ClusterVNodesReady(
        generation=1, vnodes=VNODES, pod_cidr="90.244.0.0/16", service_cidr="90.96.0.0/12"
    ),
    c.VNodeSetupProgressed: c.VNodeSetupProgressed(generation=1, vnode="master", step="kubeadm-init", status="Success"),
    c.ClusterKubernetesReady: c.ClusterKubernetesReady(
        generation=1,
        kubernetes_version="1.29",
        kubeconfig_secret="team-a-kubeconfig",
        api_server="https://10.200.0.2:6443",
        nodes=["master"],
    ),
    c.KubeflowProgressed: c.KubeflowProgressed(generation=1, release="v1.9.0", step="apply", ready=3, total=9),
    c.ClusterReady: c.ClusterReady(generation=1, kubeflow_release="v1.9.0"),
    c.ClusterPaused: c.ClusterPaused(generation=3),
    c.ClusterVNodesDeleted: c.ClusterVNodesDeleted(uid="uid-1"),
    c.ClusterIPsReleased: c.ClusterIPsReleased(uid="uid-1", released=["10.200.0.2"]),
    c.ClusterDeleted: c.ClusterDeleted(uid="uid-1"),
    c.ClusterFailed: c.ClusterFailed(stage="bootstrap", reason="StepFailed", message="kubeadm init: exit 1", failed_event="cluster.vnodes.ready"),
}


def test_every_event_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENTS)


@pytest.mark.parametrize("model", EVENTS, ids=lambda m: m.subject)
def test_round_trip_through_the_registry(model: type[Payload]) -> None:
    envelope = Envelope.new(SAMPLES[model], cluster_id="default/team-a", now=NOW)
    decoded = REGISTRY.decode(model.subject, envelope.to_json())
    assert decoded == envelope
    assert type(decoded.data) is model


@pytest.mark.parametrize("model", EVENTS, ids=lambda m: m.subject)
def test_published_json_matches_its_schema(model: type[Payload]) -> None:
    schema = REGISTRY.json_schema(model.subject)
    document = json.loads(Envelope.new(SAMPLES[model], cluster_id="default/team-a", now=NOW).to_json())
    jsonschema.validate(document, schema)
    wrong_type = {**document, "type": "cluster.somethingelse"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_type, schema)


def test_decode_names_each_problem() -> None:
    document = json.loads(Envelope.new(SAMPLES[c.ClusterRequested], cluster_id="default/team-a", now=NOW).to_json())
    document["data"]["spec"]["nodes"][0]["role"] = "boss"
    del document["correlationId"]
    with pytest.raises(InvalidEvent) as raised:
        REGISTRY.decode("cluster.requested", json.dumps(document).encode())
    paths = {p.path for p in raised.value.problems}
    assert "correlationId" in paths
    assert any(p.startswith("data.spec.nodes[0].role") for p in paths), paths
    assert raised.value.cluster_id == "default/team-a"


def test_decode_checks_subject_and_version() -> None:
    body = Envelope.new(SAMPLES[c.ClusterPaused], cluster_id="default/team-a", now=NOW).to_json()
    with pytest.raises(InvalidEvent) as raised:
        REGISTRY.decode("cluster.ready", body)
    assert "type" in {p.path for p in raised.value.problems}


def test_follow_derives_stable_ids() -> None:
    cause = Envelope.new(SAMPLES[c.ClusterAccepted], cluster_id="default/team-a", now=NOW)
    first = cause.follow(SAMPLES[c.ClusterScheduled], now=NOW)
    again = cause.follow(SAMPLES[c.ClusterScheduled], now=NOW)
    other_key = cause.follow(SAMPLES[c.ClusterScheduled], now=NOW, key="retry")
    assert first.id == again.id != other_key.id
    assert first.causation_id == cause.id
    assert first.correlation_id == cause.correlation_id


def test_plain_password_never_rides_the_bus() -> None:
    document = spec_document()
    document["kubeflow"] = {"version": "v1.9.0", "email": "a@example.com", "password": "hunter2!!"}
    with pytest.raises(ValidationError, match="plain passwords are not accepted"):
        c.ClusterRequested(name="team-a", spec=Vk8sSpec.model_validate(document))


def test_registry_refuses_duplicate_subjects() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        Registry([c.ClusterPaused, c.ClusterPaused])


def test_events_schema_command_writes_every_schema(tmp_path: Any) -> None:
    result = CliRunner().invoke(main, ["events", "schema", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == REGISTRY.subjects()
    one = CliRunner().invoke(main, ["events", "schema", "cluster.requested"])
    assert json.loads(one.output)["title"] == "cluster.requested"
    unknown = CliRunner().invoke(main, ["events", "schema", "cluster.nope"])
    assert unknown.exit_code == 2


def test_the_envelope_names_the_same_cluster_as_the_request() -> None:
    mismatched = Envelope.new(SAMPLES[c.ClusterRequested], cluster_id="default/someone-else", now=NOW)
    with pytest.raises(InvalidEvent) as raised:
        REGISTRY.decode("cluster.requested", mismatched.to_json())
    assert [str(p) for p in raised.value.problems] == ["clusterId: must be 'default/team-a', the data's namespace/name"]


@pytest.mark.parametrize("gpus", ["1.5", "2.0", "500m", "1k", "-1", -1, 1.5, "0", 0, "2", 2])
def test_the_schema_and_validation_agree_on_whole_gpus(gpus: object) -> None:
    """One truth: a GPU count the published schema refuses, `vk8s validate` refuses, and the reverse."""
    spec = spec_document()
    for node in spec["nodes"]:
        for kind in ("requests", "limits"):
            node["resources"][kind]["nvidia.com/gpu"] = gpus
    document = json.loads(Envelope.new(cluster_requested(), cluster_id="default/team-a", now=NOW).to_json())
    document["data"]["spec"] = spec
    schema_refuses = not jsonschema.Draft202012Validator(REGISTRY.json_schema("cluster.requested")).is_valid(document)
    manifest = {"apiVersion": "vk8s.skt.co.kr/v1alpha1", "kind": "Vk8s", "metadata": {"name": "team-a"}, "spec": spec}
    gpu_paths = [p.path for p in validate_document(manifest).errors if "nvidia.com/gpu" in p.path]
    assert schema_refuses == bool(gpu_paths), (schema_refuses, gpu_paths)
    if gpu_paths:
        assert gpu_paths[0] == 'spec.nodes[0].resources.requests["nvidia.com/gpu"]', gpu_paths


def test_problem_paths_bracket_dotted_keys_in_rejections_too() -> None:
    document = json.loads(Envelope.new(cluster_requested(), cluster_id="default/team-a", now=NOW).to_json())
    document["data"]["spec"]["nodes"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1.5
    with pytest.raises(InvalidEvent) as raised:
        REGISTRY.decode("cluster.requested", json.dumps(document).encode())
    assert raised.value.problems[0].path == 'data.spec.nodes[0].resources.limits["nvidia.com/gpu"]'

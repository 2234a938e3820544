"""Models of the Vk8s resource: the seed samples, normalisation, helpers, secrets and status."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from libs.api import validate_document
from libs.api.models import (
    PHASE_HISTORY_LIMIT,
    Condition,
    NodeRole,
    Phase,
    SecretKeyRef,
    Vk8s,
    Vk8sSpec,
    Vk8sStatus,
)
from libs.api.versions import NodeImageCatalog
from tests.unit.api.conftest import SAMPLES, load_sample

T0 = datetime(2023, 10, 27, 9, 34, 27, tzinfo=UTC)

# status of vk8s-1-19-ubuntu as shown in the deck
DECK_STATUS = """
conditions:
  - lastProbeTime: "2023-10-27T09:34:27Z"
    message: creating node
    phase: Waiting
  - lastProbeTime: "2023-10-27T09:34:35Z"
    message: configuring master node
    phase: Installing
  - lastProbeTime: "2023-10-27T09:35:28Z"
    message: installing kubeflow
    phase: Installing
  - lastProbeTime: "2023-10-27T09:40:35Z"
    message: Running
    phase: Running
message: Running
phase: Running
vnodeKubernetesSetupStatuses:
  vk8s-1-19-ubuntu-node-0:
    isKubernetesSetup: Success
    status: Running
"""


@pytest.mark.parametrize("name", SAMPLES)
def test_seed_samples_parse_and_lift_master_blocks(name: str) -> None:
    document = load_sample(name)
    vk8s = Vk8s.model_validate(document)
    master = document["spec"]["nodes"][0]
    assert vk8s.spec.kubeflow is not None
    assert vk8s.spec.kubeflow.version == master["kubeflow"]["version"]
    assert vk8s.spec.kubeflow.email == "test@example.com"
    assert vk8s.spec.kubeflow.password is not None
    assert vk8s.spec.kubeflow.password.get_secret_value() == "test!!22"
    assert vk8s.spec.kubernetes_version() == "1.20"
    assert vk8s.spec.nodes[0].role is NodeRole.MASTER
    assert vk8s.spec.kubeflow_ui_port() is not None
    dumped = vk8s.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert "kubeflow" not in dumped["spec"]["nodes"][0]
    assert "kubernetes" not in dumped["spec"]["nodes"][0]


def test_sample3_networks_come_from_the_master_node() -> None:
    spec = Vk8s.model_validate(load_sample("sample3.yaml")).spec
    assert (spec.kubernetes.pod_network_cidr, spec.kubernetes.service_cidr) == ("80.244.0.0/16", "80.96.0.0/12")


def test_sample4_gets_default_networks() -> None:
    spec = Vk8s.model_validate(load_sample("sample4.yaml")).spec
    assert (spec.kubernetes.pod_network_cidr, spec.kubernetes.service_cidr) == ("90.244.0.0/16", "90.96.0.0/12")


@pytest.mark.parametrize("name", SAMPLES)
def test_seed_samples_validate_with_only_the_password_warning(name: str) -> None:
    result = validate_document(load_sample(name))
    assert result.ok, result.problems
    assert [problem.path for problem in result.warnings] == ["spec.nodes[0].kubeflow.password"]


def test_preferred_example_is_clean() -> None:
    document = load_sample("team-a-gpu.yaml")
    result = validate_document(document)
    assert result.problems == [], result.problems
    assert result.vk8s is not None
    spec = result.vk8s.spec
    assert [spec.image_for(node) for node in spec.nodes] == ["ghcr.io/vk8s/kink:v1.36"] * 2
    assert spec.gpus_total() == 2


def test_dump_round_trips(document: dict[str, Any]) -> None:
    vk8s = Vk8s.model_validate(document)
    again = Vk8s.model_validate(vk8s.model_dump(mode="json", by_alias=True, exclude_none=True))
    assert again == vk8s


def test_field_names_work_as_well_as_aliases() -> None:
    spec = Vk8sSpec(
        nodes=[{"name": "m", "role": "master", "image": "kink:v1.29"}],
        kubernetes={"pod_network_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"},
    )
    assert spec.kubernetes.pod_network_cidr == "10.244.0.0/16"


def test_a_block_set_at_both_levels_is_refused(document: dict[str, Any]) -> None:
    document["spec"]["nodes"][0]["kubeflow"] = copy.deepcopy(document["spec"]["kubeflow"])
    with pytest.raises(ValidationError, match="kubeflow is set both at spec level and under nodes\\[0\\]"):
        Vk8s.model_validate(document)


def test_blocks_under_a_worker_are_refused(document: dict[str, Any]) -> None:
    document["spec"]["nodes"][1]["kubernetes"] = document["spec"].pop("kubernetes")
    with pytest.raises(ValidationError, match="nodes\\[1\\] is not the master node"):
        Vk8s.model_validate(document)


def test_models_are_frozen(document: dict[str, Any]) -> None:
    vk8s = Vk8s.model_validate(document)
    with pytest.raises(ValidationError):
        vk8s.spec.nodes[0].name = "other"  # type: ignore[misc]


def test_unknown_spec_fields_are_refused_but_metadata_keeps_them(document: dict[str, Any]) -> None:
    document["metadata"].update(uid="u-1", resourceVersion="42", creationTimestamp="2023-10-27T15:39:37Z")
    vk8s = Vk8s.model_validate(document)
    dumped = vk8s.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["metadata"]["resourceVersion"] == "42"
    document["spec"]["nodes"][0]["replicas"] = 2
    with pytest.raises(ValidationError):
        Vk8s.model_validate(document)


def test_cluster_id_defaults_namespace(document: dict[str, Any]) -> None:
    assert Vk8s.model_validate(document).cluster_id == "ml/team-a"
    del document["metadata"]["namespace"]
    assert Vk8s.model_validate(document).cluster_id == "default/team-a"


@pytest.mark.parametrize(
    ("kubernetes", "image", "expected"),
    [
        ({"version": "1.30"}, "ghcr.io/vk8s/kink:v1.30", "1.30"),
        ({"version": "v1.29.4"}, None, "1.29"),
        ({}, "host:5000/vk8s/kink:v1.20", "1.20"),
        ({}, "kink:v1.19-ubuntu", "1.19"),
        ({}, "kink:latest", None),
    ],
)
def test_kubernetes_version(kubernetes: dict[str, str], image: str | None, expected: str | None) -> None:
    node: dict[str, Any] = {"name": "m", "role": "master"}
    if image:
        node["image"] = image
    spec = Vk8sSpec.model_validate({"nodes": [node], "kubernetes": kubernetes})
    assert spec.kubernetes_version() == expected


def test_kubeflow_version_defaults_to_newest_compatible(document: dict[str, Any]) -> None:
    del document["spec"]["kubeflow"]["version"]
    document["spec"]["kubernetes"]["version"] = "1.20"
    for node in document["spec"]["nodes"]:
        node["image"] = "kink:v1.20"
    assert Vk8s.model_validate(document).spec.kubeflow_version() == "v1.4.0"
    del document["spec"]["kubeflow"]
    assert Vk8s.model_validate(document).spec.kubeflow_version() is None


def test_resource_helpers_fall_back_from_requests_to_limits(document: dict[str, Any]) -> None:
    master, worker = Vk8s.model_validate(document).spec.nodes
    assert (master.cpu_millis(), master.memory_bytes(), master.gpus()) == (2000, 8 * 2**30, 0)
    assert (worker.cpu_millis(), worker.memory_bytes(), worker.gpus()) == (8000, 32 * 2**30, 2)


def test_gpu_count_from_requests_only() -> None:
    spec = Vk8sSpec.model_validate(
        {
            "nodes": [
                {"name": "m", "role": "master", "image": "kink:v1.29", "resources": {"requests": {"nvidia.com/gpu": "1"}}},
                {"name": "w", "role": "worker", "image": "kink:v1.29", "resources": {"limits": {"nvidia.com/gpu": 4}}},
                {"name": "c", "role": "worker", "image": "kink:v1.29"},
            ]
        }
    )
    assert [node.gpus() for node in spec.nodes] == [1, 4, 0]
    assert spec.gpus_total() == 5
    assert spec.nodes[2].cpu_millis() == 0 and spec.nodes[2].memory_bytes() == 0


def test_image_for_uses_the_node_image_or_the_catalog(document: dict[str, Any]) -> None:
    del document["spec"]["nodes"][1]["image"]
    spec = Vk8s.model_validate(document).spec
    assert spec.image_for(spec.nodes[0]) == "ghcr.io/vk8s/kink:v1.36"
    catalog = NodeImageCatalog(repository="registry.local/kink")
    assert spec.image_for(spec.nodes[1], catalog) == "registry.local/kink:v1.36"


def test_image_for_without_any_version_says_why() -> None:
    spec = Vk8sSpec.model_validate({"nodes": [{"name": "m", "role": "master"}]})
    with pytest.raises(ValueError, match=re.escape("no image and spec.kubernetes.version is not set")):
        spec.image_for(spec.nodes[0])


def test_placement_and_node_gpu_model(document: dict[str, Any]) -> None:
    document["spec"]["placement"] = {"gpuModel": "NVIDIA-A100-SXM4-80GB", "spreadZones": True}
    document["spec"]["nodes"][1]["gpuModel"] = "NVIDIA-H100-80GB-HBM3"
    spec = Vk8s.model_validate(document).spec
    assert spec.placement is not None and spec.placement.spread_zones
    assert spec.nodes[1].gpu_model == "NVIDIA-H100-80GB-HBM3"


# --- the plain Kubeflow password ----------------------------------------------------------------

PASSWORD = "s3cr3t-Pa55!"


def _with_plain_password(document: dict[str, Any]) -> Vk8s:
    document["spec"]["kubeflow"] = {"version": "v1.9.0", "email": "alice@example.com", "password": PASSWORD}
    return Vk8s.model_validate(document)


def test_redacted_copy_carries_a_secret_reference_and_no_password(document: dict[str, Any]) -> None:
    vk8s = _with_plain_password(document)
    safe = vk8s.redacted()
    assert safe.spec.kubeflow is not None
    assert safe.spec.kubeflow.password is None
    assert safe.spec.kubeflow.password_secret_ref == SecretKeyRef(name="team-a-kubeflow-user", key="password")
    assert safe.spec.kubeflow.email == "alice@example.com" and safe.spec.kubeflow.version == "v1.9.0"
    for dump in (
        json.dumps(safe.model_dump(mode="json", by_alias=True)),
        yaml.safe_dump(safe.model_dump(mode="json", by_alias=True)),
        safe.model_dump_json(),
        repr(safe),
    ):
        assert PASSWORD not in dump
        assert "passwordSecretRef" in dump or "password_secret_ref" in dump
    # the original still holds it for the gateway, which writes the Secret
    assert vk8s.spec.kubeflow is not None and vk8s.spec.kubeflow.password is not None
    assert vk8s.spec.kubeflow.password.get_secret_value() == PASSWORD


def test_redacted_without_plain_password_is_unchanged(document: dict[str, Any]) -> None:
    vk8s = Vk8s.model_validate(document)
    assert vk8s.redacted() == vk8s


def test_password_is_masked_even_without_redaction(document: dict[str, Any]) -> None:
    vk8s = _with_plain_password(document)
    assert PASSWORD not in repr(vk8s)
    assert PASSWORD not in str(vk8s)
    assert PASSWORD not in vk8s.model_dump_json()


def test_a_mistyped_password_stays_out_of_errors(document: dict[str, Any]) -> None:
    document["spec"]["kubeflow"] = {"email": "alice@example.com", "password": 12341234}
    with pytest.raises(ValidationError) as caught:
        Vk8s.model_validate(document)
    assert "12341234" not in str(caught.value)
    result = validate_document(document)
    assert not result.ok
    assert all("12341234" not in str(problem) for problem in result.problems)


# --- status -------------------------------------------------------------------------------------


def test_deck_status_parses() -> None:
    status = Vk8sStatus.model_validate(yaml.safe_load(DECK_STATUS))
    assert status.phase is Phase.RUNNING
    assert [record.phase for record in status.conditions] == [
        Phase.WAITING, Phase.INSTALLING, Phase.INSTALLING, Phase.RUNNING,
    ]
    assert status.conditions[0].last_probe_time == T0
    setup = status.vnode_kubernetes_setup_statuses["vk8s-1-19-ubuntu-node-0"]
    assert (setup.status, setup.is_kubernetes_setup, setup.message) == ("Running", "Success", "")


@pytest.mark.parametrize(
    "change",
    [
        {"phase": "Bogus"},
        {"vnodeKubernetesSetupStatuses": {"n-0": {"isKubernetesSetup": "Maybe"}}},
        {"conditions": [{"phase": "Running", "lastProbeTime": "2023-10-27T09:34:27"}]},  # no time zone
        {"readiness": [{"type": "Ready", "status": "Yes", "reason": "R", "lastTransitionTime": "2023-10-27T09:34:27Z"}]},
        {"readiness": [{"type": "Ready", "status": "True", "reason": "not camel", "lastTransitionTime": "2023-10-27T09:34:27Z"}]},
        {"gpus": -1},
    ],
)
def test_status_refuses(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Vk8sStatus.model_validate(change)


def test_with_phase_appends_history_only_on_change() -> None:
    status = Vk8sStatus().with_phase(Phase.WAITING, "creating node", T0)
    status = status.with_phase(Phase.WAITING, "creating node", T0 + timedelta(seconds=5))
    status = status.with_phase(Phase.INSTALLING, "configuring master node", T0 + timedelta(seconds=8))
    status = status.with_phase(Phase.INSTALLING, "installing kubeflow", T0 + timedelta(seconds=60))
    assert status.phase is Phase.INSTALLING and status.message == "installing kubeflow"
    assert [(r.phase, r.message) for r in status.conditions] == [
        (Phase.WAITING, "creating node"),
        (Phase.INSTALLING, "configuring master node"),
        (Phase.INSTALLING, "installing kubeflow"),
    ]


def test_phase_history_is_bounded() -> None:
    status = Vk8sStatus()
    for step in range(PHASE_HISTORY_LIMIT + 5):
        status = status.with_phase(Phase.INSTALLING, f"step {step}", T0 + timedelta(seconds=step))
    assert len(status.conditions) == PHASE_HISTORY_LIMIT
    assert status.conditions[-1].message == f"step {PHASE_HISTORY_LIMIT + 4}"


def _condition(type_: str, status: str, at: datetime, reason: str = "Reason") -> Condition:
    return Condition(type=type_, status=status, reason=reason, message="", last_transition_time=at)


def test_with_condition_keeps_transition_time_while_status_holds() -> None:
    status = Vk8sStatus().with_condition(_condition("NodesReady", "False", T0, "WaitingForPods"))
    status = status.with_condition(_condition("Ready", "False", T0))
    later = T0 + timedelta(minutes=1)
    status = status.with_condition(_condition("NodesReady", "False", later, "WaitingForKubeadm"))
    nodes_ready = status.condition("NodesReady")
    assert nodes_ready is not None
    assert nodes_ready.reason == "WaitingForKubeadm" and nodes_ready.last_transition_time == T0
    status = status.with_condition(_condition("NodesReady", "True", later, "AllNodesReady"))
    nodes_ready = status.condition("NodesReady")
    assert nodes_ready is not None and nodes_ready.last_transition_time == later
    assert [condition.type for condition in status.readiness] == ["NodesReady", "Ready"]
    assert status.condition("KubeflowReady") is None

"""The CRD manifest agrees with the models: generated from them, and checked field by field."""

from __future__ import annotations

import copy
import functools
import types
import typing
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from libs.api.crd import CRD_FILE_NAME, PRINTER_COLUMNS, crd_manifest, render_crd
from libs.api.models import (
    NODE_LEVEL_BLOCKS,
    Condition,
    NodeSpec,
    Phase,
    Vk8s,
    Vk8sSpec,
    Vk8sStatus,
    VNodeSetupStatus,
)
from tests.unit.api.conftest import EXAMPLES, REPO, valid_document

CRD_PATH = REPO / "deploy" / "crds" / CRD_FILE_NAME


@functools.cache
def committed_crd() -> dict[str, Any]:
    """Parsed once; tests that alter it work on a deep copy."""
    return yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))


def crd_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    (version,) = (crd or committed_crd())["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_committed_crd_is_up_to_date() -> None:
    assert CRD_PATH.read_text(encoding="utf-8") == render_crd(), (
        "deploy/crds is stale: run `.venv/bin/python -m libs.api.crd > deploy/crds/vk8s.skt.co.kr_vk8s.yaml`"
    )


def test_crd_identity() -> None:
    crd = committed_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "vk8s.vk8s.skt.co.kr"
    spec = crd["spec"]
    assert spec["group"] == "vk8s.skt.co.kr" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "Vk8s", "listKind": "Vk8sList", "plural": "vk8s", "singular": "vk8s", "shortNames": ["vk"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert [column["name"] for column in version["additionalPrinterColumns"]] == ["Phase", "Nodes", "GPUs", "Message", "Age"]


@pytest.mark.parametrize("column", [c for c in PRINTER_COLUMNS if c["jsonPath"].startswith(".status.")])
def test_printer_columns_point_at_status_fields(column: dict[str, str]) -> None:
    field = column["jsonPath"].removeprefix(".status.")
    status = crd_schema()["properties"]["status"]["properties"]
    assert field in status
    assert status[field]["type"] == column["type"]


# --- model fields <-> CRD properties, walked from the model classes (not from their JSON schema) ---


def _args(annotation: Any) -> tuple[Any, ...]:
    """Members of a union / Annotated, flattened; None dropped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _args(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return tuple(member for arg in typing.get_args(annotation) for member in _args(arg))
    return () if annotation is type(None) else (annotation,)


def _children(annotation: Any, schema: dict[str, Any], where: str) -> Iterator[tuple[Any, dict[str, Any], str]]:
    """(inner annotation, its CRD schema) through lists and maps."""
    for member in _args(annotation):
        origin = typing.get_origin(member)
        if origin in (tuple, list):
            assert schema.get("type") == "array", where
            yield from _children(typing.get_args(member)[0], schema["items"], f"{where}[]")
        elif origin in (dict, Mapping):
            assert schema.get("type") == "object" and "additionalProperties" in schema, where
            yield from _children(typing.get_args(member)[1], schema["additionalProperties"], f"{where}{{}}")
        else:
            yield member, schema, where


def _enum_values(annotation: Any) -> set[str] | None:
    for member in _args(annotation):
        if typing.get_origin(member) is typing.Literal:
            return {str(value) for value in typing.get_args(member)}
        if isinstance(member, type) and issubclass(member, Enum):
            return {str(item.value) for item in member}
    return None


def assert_agrees(model: type[BaseModel], schema: dict[str, Any], where: str) -> None:
    assert schema.get("type") == "object", where
    properties = schema.get("properties", {})
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    node_level = set(NODE_LEVEL_BLOCKS) if model is NodeSpec else set()
    assert set(properties) == set(fields) | node_level, f"{where}: CRD {sorted(properties)} vs model {sorted(fields)}"
    required = {alias for alias, info in fields.items() if info.is_required()}
    assert set(schema.get("required", [])) == required, f"{where}: required"
    for alias, info in fields.items():
        for inner, child, path in _children(info.annotation, properties[alias], f"{where}.{alias}"):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                assert_agrees(inner, child, path)
            enum = _enum_values(inner)
            if enum is not None:
                assert set(child.get("enum", [])) == enum, f"{path}: enum"


def assert_crd_agrees(schema: dict[str, Any]) -> None:
    assert_agrees(Vk8sSpec, schema["properties"]["spec"], "spec")
    assert_agrees(Vk8sStatus, schema["properties"]["status"], "status")


def test_every_model_field_is_in_the_crd_and_nothing_else() -> None:
    assert_crd_agrees(crd_schema())


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda s: s["properties"]["spec"]["properties"].pop("ports"), id="field-dropped"),
        pytest.param(lambda s: s["properties"]["spec"]["properties"]["nodes"]["items"]["properties"].update(
            extra={"type": "string"}), id="field-added"),
        pytest.param(lambda s: s["properties"]["spec"]["properties"]["nodes"]["items"]["properties"]["role"].update(
            enum=["master", "worker", "edge"]), id="enum-changed"),
        pytest.param(lambda s: s["properties"]["status"]["properties"]["phase"]["enum"].remove("Paused"),
                     id="status-enum-changed"),
        pytest.param(lambda s: s["properties"]["spec"]["properties"]["kubeflow"].update(required=[]),
                     id="required-changed"),
    ],
)
def test_the_agreement_check_catches_drift(damage: Any) -> None:
    schema = copy.deepcopy(crd_schema())
    damage(schema)
    with pytest.raises(AssertionError):
        assert_crd_agrees(schema)


# --- structural-schema rules the apiserver enforces ----------------------------------------------


def _walk(schema: dict[str, Any], where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield where, schema
    for name, child in schema.get("properties", {}).items():
        yield from _walk(child, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{where}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{where}{{}}")


def test_schema_is_structural() -> None:
    for where, node in _walk(crd_schema()):
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], where
            assert "type" not in node, where
        else:
            assert "type" in node and "anyOf" not in node, where
        assert not ("properties" in node and "additionalProperties" in node), where
        assert "$ref" not in node and "nullable" not in node and "default" not in node, where
        assert "x-kubernetes-preserve-unknown-fields" not in node, where
        if node.get("x-kubernetes-list-type") == "map":
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in node["items"]["required"], where


# --- objects against the CRD schema, as the apiserver would check them ------------------------------


def crd_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema())


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.name)
def test_examples_pass_the_crd(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        crd_validator().validate(document)


def test_a_full_object_with_status_passes_the_crd() -> None:
    now = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    document = valid_document()
    document["spec"]["placement"] = {"gpuModel": "NVIDIA-A100-SXM4-80GB", "spreadZones": True}
    document["spec"]["nodes"][1]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    vk8s = Vk8s.model_validate(document)
    status = (
        Vk8sStatus(
            nodes=len(vk8s.spec.nodes),
            gpus=vk8s.spec.gpus_total(),
            observed_generation=1,
            vnode_kubernetes_setup_statuses={
                "team-a-master-0": VNodeSetupStatus(status="Running", is_kubernetes_setup="Success"),
            },
        )
        .with_phase(Phase.WAITING, "creating node", now)
        .with_phase(Phase.RUNNING, "Running", now)
        .with_condition(
            Condition(type="Ready", status="True", reason="KubeflowAvailable", last_transition_time=now,
                      observed_generation=1)
        )
    )
    dumped = vk8s.model_copy(update={"status": status}).model_dump(mode="json", by_alias=True, exclude_none=True)
    crd_validator().validate(dumped)
    assert dumped["status"]["gpus"] == 2


CRD_REJECTS = [
    pytest.param(lambda d: d["spec"]["nodes"][0].update(role="boss"), id="role"),
    pytest.param(lambda d: d["spec"]["ports"][0].update(nodePort=40000), id="node-port"),
    pytest.param(lambda d: d["spec"]["ports"][0].update(port="30000"), id="port-string"),
    pytest.param(lambda d: d["spec"]["kubeflow"].update(version="1.9.0"), id="kubeflow-version"),
    pytest.param(lambda d: d["spec"]["kubeflow"].update(email="alice"), id="email"),
    pytest.param(lambda d: d["spec"]["kubeflow"].pop("email"), id="email-missing"),
    pytest.param(lambda d: d["spec"]["nodes"][0]["resources"]["limits"].update(memory="16 Gi"), id="quantity"),
    pytest.param(lambda d: d["spec"]["nodes"][0]["resources"]["limits"].update(cpu=1.5), id="quantity-float"),
    pytest.param(lambda d: d["spec"]["nodes"][0].update(name="Master"), id="node-name"),
    pytest.param(lambda d: d["spec"].update(nodes=[]), id="no-nodes"),
    pytest.param(lambda d: d.pop("spec"), id="no-spec"),
    pytest.param(lambda d: d["metadata"].update(name="team_a"), id="metadata-name"),
    pytest.param(lambda d: d.update(status={"phase": "Bogus"}), id="status-phase"),
    pytest.param(lambda d: d.update(status={"gpus": -1}), id="status-gpus"),
    pytest.param(lambda d: d.update(status={"vnodeKubernetesSetupStatuses": {"n": {"isKubernetesSetup": "Yes"}}}),
                 id="status-setup"),
]


@pytest.mark.parametrize("damage", CRD_REJECTS)
def test_crd_rejects_what_the_models_reject(damage: Any) -> None:
    document = valid_document()
    crd_validator().validate(document)
    damage(document)
    assert list(crd_validator().iter_errors(document)), "the CRD accepted it"
    with pytest.raises(ValidationError):
        Vk8s.model_validate(document)


def test_generated_manifest_round_trips_through_yaml() -> None:
    assert yaml.safe_load(render_crd()) == crd_manifest()

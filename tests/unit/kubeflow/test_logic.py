from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from pydantic import ValidationError

from libs.api import ServicePort
from services.kubeflow import logic
from services.kubeflow.settings import ManifestSource, ManifestSources

BUNDLE = Path(__file__).resolve().parents[3] / "deploy/kubeflow/minimal"


def objects() -> list[dict[str, Any]]:
    return [d for p in sorted(BUNDLE.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def test_apply_order_puts_namespaces_and_crds_first_and_custom_resources_after_workloads() -> None:
    profile = logic.profile_for("a@example.com")
    webhook = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "w"}}
    ordered = logic.order_for_apply([webhook, profile, *reversed(objects())])
    kinds = [o["kind"] for o in ordered]
    assert kinds[:3] == ["Namespace"] * 3
    assert kinds[3:5] == ["CustomResourceDefinition"] * 2
    assert kinds.index("Profile") > max(i for i, k in enumerate(kinds) if k == "Deployment")
    assert kinds[-1] == "ValidatingWebhookConfiguration"


def test_workloads_are_the_release_deployments() -> None:
    assert ("auth", "dex") in logic.workloads(objects())
    assert len(logic.workloads(objects())) == 7


def deployment(available: str, replicas: int = 1, ready: int = 1) -> dict[str, Any]:
    return {
        "spec": {"replicas": replicas},
        "status": {"availableReplicas": ready, "conditions": [{"type": "Available", "status": available}]},
    }


def test_readiness_counts_available_deployments_and_names_the_rest() -> None:
    expected = [("auth", "dex"), ("kubeflow", "ml-pipeline"), ("kubeflow", "centraldashboard")]
    observed = {("auth", "dex"): deployment("True"), ("kubeflow", "ml-pipeline"): deployment("False", ready=0)}
    state = logic.readiness(expected, observed)
    assert state.ready == (("auth", "dex"),)
    assert not state.done
    assert state.message() == "waiting for kubeflow/ml-pipeline, kubeflow/centraldashboard"
    assert not logic.deployment_available(deployment("True", replicas=2, ready=1))
    assert logic.readiness(expected[:1], observed).done


def test_dex_user_replaces_the_entry_for_the_same_email_only() -> None:
    config = yaml.safe_dump({"staticPasswords": [{"email": "other@example.com", "hash": "x"}, {"email": "a@example.com", "hash": "old"}]})
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    updated = logic.dex_config_with_user(config, email="a@example.com", password_hash=hashed, user_id=logic.user_id("a@example.com"))
    entries = yaml.safe_load(updated)["staticPasswords"]
    assert [e["email"] for e in entries] == ["other@example.com", "a@example.com"]
    current = logic.current_hash(updated, "a@example.com")
    assert current is not None and bcrypt.checkpw(b"s3cret", current.encode())
    assert "s3cret" not in updated


@pytest.mark.parametrize(("email", "name"), [("Test.User@example.com", "test-user"), ("a_b+c@x.io", "a-b-c"), ("__@x.io", "user")])
def test_user_names_are_dns_labels(email: str, name: str) -> None:
    assert logic.user_name(email) == name
    assert logic.profile_for(email)["spec"]["owner"] == {"kind": "User", "name": email}


def test_ui_node_port_comes_from_the_kubeflow_port() -> None:
    ports = [ServicePort(name="ssh", port=22), ServicePort(name="kubeflow", port=30000, target_port=30000)]
    assert logic.ui_node_port(ports) == 30000
    assert logic.ui_service(30000)["spec"]["ports"][0]["nodePort"] == 30000
    assert logic.ui_node_port([ServicePort(name="kubeflow", port=8080)]) is None
    assert logic.ui_node_port([]) is None


def test_a_manifest_source_is_exactly_one_kind() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ManifestSource()
    with pytest.raises(ValidationError, match="exactly one"):
        ManifestSource(directory=Path("/a"), kustomize=Path("/b"))
    sources = ManifestSources.model_validate(
        {"releases": {"v1.9.0": {"git": {"url": "https://example.com/m.git", "ref": "v1.9.0"}}}, "default": {"directory": "/m"}}
    )
    released, default = sources.for_release("v1.9.0"), sources.for_release("v1.3.0")
    assert released is not None and released.git is not None and released.git.path == "example"
    assert default is not None and default.directory == Path("/m")


def test_unavailable_deployments_are_named_with_what_their_pods_say() -> None:
    waiting = [("auth", "dex"), ("kubeflow", "ml-pipeline")]
    reasons = {("auth", "dex"): 'ErrImageNeverPull: Container image "ghcr.io/dexidp/dex:v2.41.1" is not present'}
    assert logic.unavailable(waiting, reasons) == [
        'auth/dex: ErrImageNeverPull: Container image "ghcr.io/dexidp/dex:v2.41.1" is not present',
        "kubeflow/ml-pipeline: no pod reports why",
    ]
    assert logic.still_starting(waiting, reasons), "ml-pipeline's pods say nothing yet"
    assert logic.still_starting([("auth", "dex")], {("auth", "dex"): "ContainerCreating"})
    assert not logic.still_starting([("auth", "dex")], reasons)

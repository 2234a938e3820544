"""A cluster record as the vnode stage keeps it, for tests of every tier."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from libs.api.models import Vk8sSpec
from libs.events.catalog import VNodePlacement
from services.vnode import logic
from tests.support.events import spec_document

UID = "5f0c8b1e-7c1d-4a36-9c55-0d1f2f3e4a5b"
AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def record(*, workers: int = 1, gpus: int = 1, **changes: Any) -> logic.ClusterRecord:
    document = spec_document(gpus=gpus, workers=workers)
    document["nodes"][0]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    document["ports"] = [{"name": "kubeflow", "port": 80, "targetPort": 8080}]
    document["accessPodImage"] = "registry.example/vk8s/access:1"
    spec = Vk8sSpec.model_validate(document)
    placements = tuple(
        VNodePlacement(vnode=node.name, role=node.role.value, host_node=f"gpu-node-{i}", gpus=gpus)
        for i, node in enumerate(spec.nodes)
    )
    allocation = logic.Allocation(
        generation=1,
        placements=placements,
        vnode_ips={node.name: f"10.200.0.{i + 2}" for i, node in enumerate(spec.nodes)},
        pod_cidr="90.244.0.0/16",
        service_cidr="90.96.0.0/12",
    )
    fields: dict[str, Any] = {
        "uid": UID,
        "name": "team-a",
        "namespace": "ml",
        "generation": 1,
        "spec": spec,
        "labels": {"team": "vision", "app": "not-ours"},
        "annotations": {"owner": "kim", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
        "observed_at": AT,
        "allocation": allocation,
        "scaled_up": True,
    }
    return logic.ClusterRecord(**{**fields, **changes})

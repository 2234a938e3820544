"""Small valid payloads for tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from libs.api.models import Vk8sSpec
from libs.events.catalog import ClusterRequested

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def spec_document(gpus: int = 1, workers: int = 0) -> dict[str, Any]:
    def node(name: str, role: str) -> dict[str, Any]:
        return {
            "name": name,
            "image": "ghcr.io/vk8s/kink:v1.36",
            "role": role,
            "resources": {
                "requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": str(gpus)},
                "limits": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": str(gpus)},
            },
        }

    return {
        "nodes": [node("master", "master")] + [node(f"worker-{i}", "worker") for i in range(workers)],
        "kubeflow": {
            "version": "v1.11.0",
            "email": "user@example.com",
            "passwordSecretRef": {"name": "team-a-kubeflow", "key": "password"},
        },
    }


def cluster_requested(name: str = "team-a", **spec_kwargs: Any) -> ClusterRequested:
    return ClusterRequested(name=name, namespace="default", spec=Vk8sSpec.model_validate(spec_document(**spec_kwargs)))

"""A valid Vk8s document each test may change freely, and the seed samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
SAMPLES = ("sample3.yaml", "sample4.yaml")


def valid_document() -> dict[str, Any]:
    """One master and one GPU worker on Kubernetes 1.36 with Kubeflow v1.11.0; no problem, not even a warning."""
    return {
        "apiVersion": "vk8s.skt.co.kr/v1alpha1",
        "kind": "Vk8s",
        "metadata": {"name": "team-a", "namespace": "ml"},
        "spec": {
            "kubernetes": {"version": "1.36"},
            "kubeflow": {
                "version": "v1.11.0",
                "email": "alice@example.com",
                "passwordSecretRef": {"name": "alice-kubeflow", "key": "password"},
            },
            "nodes": [
                {
                    "name": "team-a-master",
                    "role": "master",
                    "image": "ghcr.io/vk8s/kink:v1.36",
                    "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}},
                },
                {
                    "name": "team-a-gpu-1",
                    "role": "worker",
                    "image": "ghcr.io/vk8s/kink:v1.36",
                    "resources": {"limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2}},
                },
            ],
            "ports": [{"name": "kubeflow", "port": 30000, "targetPort": 30000}],
        },
    }


def load_sample(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))


@pytest.fixture
def document() -> dict[str, Any]:
    return valid_document()

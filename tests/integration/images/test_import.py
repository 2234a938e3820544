"""The built archives are images containerd takes: a private containerd (its own root, state and
socket under tmp_path) imports the pause and toolbox archives with `ctr images import` and runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vk8s.images.builders import kubeadm_image_refs, pause_image, toolbox_image
from vk8s.testbed.config import pinned_versions
from vk8s.testbed.lifecycle import ensure_binaries

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containerd and runc need root")
NAMESPACE = "k8s.io"  # where kubelets look for images
START_TIMEOUT = 30.0


class Ctr:
    """`ctr` against one containerd; every path it would otherwise keep under /run is under `base`."""

    def __init__(self, base: Path) -> None:
        self.socket = base / "containerd.sock"
        self.runc_root = base / "runc"
        self.fifo_dir = base / "fifo"

    def __call__(self, *args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run(self, image: str, container: str, *argv: str) -> subprocess.CompletedProcess[str]:
        # No cgroup: nothing is left in the host's cgroup hierarchies.
        options = ("--rm", "--cgroup", "", "--runc-root", self.runc_root, "--fifo-dir", self.fifo_dir)
        return self("run", *options, image, container, *argv)


def config_toml(base: Path) -> str:
    # No CRI plugin: ctr alone needs neither it nor its `restrict_oom_score_adj` (see real-nodes notes).
    return f"""\
version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{base / 'containerd.sock'}"

[ttrpc]
  address = "{base / 'containerd.sock.ttrpc'}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
"""


def unmount_under(base: Path) -> None:
    """Lazily unmounts whatever is still mounted below `base` (deepest first), so rmtree can finish."""
    mounts = [Path(line.split()[4]) for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted((m for m in mounts if base in m.parents), key=lambda m: len(m.parts), reverse=True):
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


@pytest.fixture
def ctr(tmp_path: Path) -> Iterator[Ctr]:
    base = tmp_path / "containerd"
    base.mkdir()
    (base / "config.toml").write_text(config_toml(base))
    client = Ctr(base)
    with (base / "containerd.log").open("w") as log:
        daemon = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while client("version", timeout=10).returncode != 0:
            assert daemon.poll() is None, (base / "containerd.log").read_text()
            assert time.monotonic() < deadline, f"containerd did not serve in {START_TIMEOUT:.0f}s"
            time.sleep(0.1)
        yield client
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        unmount_under(base)
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def archives() -> dict[str, Path]:
    """ref -> archive of the pause image kubeadm names and the toolbox (built or reused from the cache)."""
    version = pinned_versions()["KUBERNETES_VERSION"]
    pause_ref = next(ref for ref in kubeadm_image_refs(ensure_binaries(), version) if "/pause:" in ref)
    toolbox_ref, toolbox = toolbox_image()
    return {pause_ref: pause_image(pause_ref, version), toolbox_ref: toolbox}


def test_imported_archives_are_listed_under_their_refs(ctr: Ctr, archives: dict[str, Path]) -> None:
    for archive in archives.values():
        result = ctr("images", "import", archive)
        assert result.returncode == 0, result.stderr

    listed = ctr("images", "list", "--quiet")

    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == set(archives)


def test_the_toolbox_runs_its_applets(ctr: Ctr, archives: dict[str, Path]) -> None:
    (ref,) = [ref for ref in archives if "/toolbox:" in ref]
    assert ctr("images", "import", archives[ref]).returncode == 0

    result = ctr.run(ref, "vk8s-images-toolbox", "sh", "-c", 'echo "hello from $(basename $(readlink /bin/sh))"; id -u')

    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["hello from busybox", "0"]


def test_the_pause_binary_runs_in_its_image(ctr: Ctr, archives: dict[str, Path]) -> None:
    (ref,) = [ref for ref in archives if "/pause:" in ref]
    assert ctr("images", "import", archives[ref]).returncode == 0

    result = ctr.run(ref, "vk8s-images-pause", "/pause", "-v")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pause.c v{ref.rpartition(':')[2]}-vk8s"

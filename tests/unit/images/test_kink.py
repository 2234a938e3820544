"""The kink recipe without mmdebstrap or a container runtime: a tiny tar stands in for the Debian
base, shell scripts for kubeadm and ctr. tests/integration/images/test_kink_boot.py boots the real one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from libs.api.versions import NodeImageCatalog, VersionError
from tests.support.archives import file_in
from tests.unit.images.support import kubeadm_script, script
from vk8s.images import kink
from vk8s.images.errors import ImageBuildError
from vk8s.images.oci import ImageConfig, write_archive

PAUSE = "registry.k8s.io/pause:3.10.2"
ETCD = "registry.k8s.io/etcd:3.6.8-0"
KUBEADM_LIST = [
    "registry.k8s.io/kube-apiserver:v1.36.3",
    "registry.k8s.io/kube-proxy:v1.36.3",
    "registry.k8s.io/coredns/coredns:v1.14.2",
    PAUSE,
    ETCD,
]


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VK8S_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def crictl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A script instead of the crictl Go build."""
    binary = script(tmp_path / "tools" / "crictl", "exit 0")
    monkeypatch.setattr(kink, "crictl_binary", lambda: binary)
    return binary


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    kubeadm_script(directory, KUBEADM_LIST)
    script(directory / "kubelet", 'echo "Kubernetes v1.36.3"')
    script(directory / "kubectl", "exit 0")
    return directory


@pytest.fixture
def base_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-file base layer instead of mmdebstrap's rootfs."""
    tree = tmp_path / "base-tree" / "etc"
    tree.mkdir(parents=True)
    (tree / "os-release").write_text("ID=debian\n")
    base = tmp_path / "base" / "kink-base.tar"
    base.parent.mkdir()
    with tarfile.open(base, "w") as tar:
        tar.add(tree, arcname="etc")
    monkeypatch.setattr(kink, "base_rootfs", lambda: base)
    return base


def image_archive(tmp_path: Path, ref: str) -> Path:
    tree = tmp_path / "trees" / ref.replace("/", "_")
    tree.mkdir(parents=True)
    (tree / "hello").write_text(ref)
    out = tmp_path / "archives" / (ref.replace("/", "_") + ".tar")
    out.parent.mkdir(exist_ok=True)
    write_archive(out, ref, [tree], ImageConfig(entrypoint=["/hello"]))
    return out


def read_layout(archive: Path) -> tuple[dict[str, Any], dict[str, Any], list[tarfile.TarFile]]:
    """(index, config, layers) of an OCI archive; the layers are opened from a copy in memory."""
    import io

    with tarfile.open(archive) as tar:

        def blob(digest: str) -> bytes:
            return file_in(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}")

        index = json.loads(file_in(tar, "index.json"))
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        # The caller reads the layers after this returns; they live in memory, nothing to close.
        layers = [tarfile.open(fileobj=io.BytesIO(blob(layer["digest"]))) for layer in manifest["layers"]]  # noqa: SIM115
    return index, config, layers


def test_refs_are_the_vnode_services_catalog_refs() -> None:
    assert kink.kink_ref("1.36.3") == "ghcr.io/vk8s/kink:v1.36" == NodeImageCatalog().image_for("v1.36")
    assert kink.kink_ref("v1.35") == "ghcr.io/vk8s/kink:v1.35"
    assert kink.kink_ref("1.36.3", gpu=True) == "ghcr.io/vk8s/kink:v1.36-gpu"


def test_a_version_without_a_catalog_ref_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def none(self: NodeImageCatalog, kubernetes: str, *args: object) -> str:
        raise VersionError(f"no node image for Kubernetes {kubernetes}")

    monkeypatch.setattr(NodeImageCatalog, "image_for", none)
    with pytest.raises(ImageBuildError, match=re.escape("no kink ref for Kubernetes 1.10.0")):
        kink.kink_ref("1.10.0")


def test_debian_sources_keep_the_suites_mirrors_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n"
    )
    one_line = tmp_path / "extra.list"
    one_line.write_text(
        "deb [signed-by=/k.gpg arch=amd64] https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
        "deb [ arch=amd64 ] http://mirror.example/debian bookworm main contrib\n"
    )
    monkeypatch.setattr(kink, "apt_sources", lambda: [deb822, one_line])
    assert kink.debian_sources("bookworm") == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
        "deb http://mirror.example/debian bookworm main contrib",
    ]


def test_no_debian_mirror_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only = tmp_path / "other.list"
    only.write_text("deb https://deb.nodesource.com/node_20.x nodistro main\n")
    monkeypatch.setattr(kink, "apt_sources", lambda: [only])
    with pytest.raises(ImageBuildError, match="no Debian bookworm mirror"):
        kink.debian_sources("bookworm")


def test_the_image_is_the_base_plus_the_node(tmp_path: Path, bin_dir: Path, base_tar: Path) -> None:
    preload = {PAUSE: image_archive(tmp_path, PAUSE), ETCD: image_archive(tmp_path, ETCD)}
    archive = kink.build_kink_image(bin_dir, "1.36.3", preload, False, tmp_path / "out")

    assert archive == tmp_path / "out" / "kink-v1.36.tar"
    index, config, (base, node) = read_layout(archive)
    assert kink.archive_refs(archive) == ["ghcr.io/vk8s/kink:v1.36"]
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1.36"
    runtime = config["config"]
    assert runtime["Entrypoint"] == ["/usr/local/bin/vk8s-entrypoint"]
    assert runtime["Cmd"] == ["/sbin/init"]
    assert runtime["StopSignal"] == "SIGRTMIN+3"
    assert "container=docker" in runtime["Env"] and "VK8S_KUBERNETES_VERSION=v1.36.3" in runtime["Env"]
    assert base.getnames() == ["etc", "etc/os-release"]

    members = {member.name: member for member in node.getmembers()}
    for name in ("kubeadm", "kubelet", "kubectl", "crictl", "vk8s-node", "vk8s-entrypoint", "vk8s-preload-images"):
        assert members[f"usr/local/bin/{name}"].mode == 0o755
    assert members["usr/local/bin/containerd"].linkname == "/usr/bin/containerd"
    assert all(m.mode == 0o755 for m in members.values() if m.isdir()), "a directory would change the base's mode"
    wants = {n.rsplit("/", 1)[1]: m.linkname for n, m in members.items() if "/multi-user.target.wants/" in n}
    assert wants == {unit: f"/etc/systemd/system/{unit}" for unit in kink.BOOT_UNITS}
    for unit in ("kubelet.service", "kubelet.service.d/10-kubeadm.conf", "kubelet.service.d/20-vk8s-preload.conf"):
        assert f"etc/systemd/system/{unit}" in members

    containerd = file_in(node, "etc/containerd/config.toml").decode()
    assert f'sandbox_image = "{PAUSE}"' in containerd
    for setting in (
        "SystemdCgroup = false",
        "restrict_oom_score_adj = true",
        "tolerate_missing_hugepages_controller = true",
        "discard_unpacked_layers = true",
        'snapshotter = "overlayfs"',
    ):
        assert setting in containerd

    listing = file_in(node, "var/lib/vk8s/images/images.list").decode()
    lines = [line.split("\t") for line in listing.splitlines()]
    assert [ref for _, ref in lines] == sorted(preload)
    for file, ref in lines:
        assert file_in(node, f"var/lib/vk8s/images/{file}") == preload[ref].read_bytes()

    record = kink.read_build_record(archive)
    assert record.ref == "ghcr.io/vk8s/kink:v1.36"
    assert record.sandbox_image == PAUSE
    assert record.preloaded == tuple(sorted(preload))
    assert record.size_bytes == archive.stat().st_size
    assert record.build_seconds >= 0


def test_a_second_build_is_the_cached_one(
    tmp_path: Path, bin_dir: Path, base_tar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preload = {PAUSE: image_archive(tmp_path, PAUSE)}
    first = kink.build_kink_image(bin_dir, "1.36.3", preload, False, tmp_path / "out")
    inode = first.stat().st_ino

    def fail(*args: object) -> None:
        raise AssertionError("rebuilt")

    monkeypatch.setattr(kink, "write_archive", fail)
    again = kink.build_kink_image(bin_dir, "v1.36.3", preload, False, tmp_path / "elsewhere")
    assert again.stat().st_ino == inode
    assert kink.read_build_record(again).key == kink.read_build_record(first).key

    # Another input is another key, and a new build.
    (bin_dir / "kubectl").write_text("#!/bin/sh\necho changed\n")
    with pytest.raises(AssertionError, match="rebuilt"):
        kink.build_kink_image(bin_dir, "1.36.3", preload, False, tmp_path / "out")


def layer_digests(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        index = json.loads(file_in(tar, "index.json"))
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.loads(file_in(tar, f"blobs/sha256/{digest}"))
    return [layer["digest"] for layer in manifest["layers"]]


def test_the_gpu_image_shares_the_plain_ones_layers_and_adds_a_marker(
    tmp_path: Path, bin_dir: Path, base_tar: Path
) -> None:
    preload = {PAUSE: image_archive(tmp_path, PAUSE)}
    plain = kink.build_kink_image(bin_dir, "1.36.3", preload, False, tmp_path / "out")
    gpu = kink.build_kink_image(bin_dir, "1.36.3", preload, True, tmp_path / "out")

    assert gpu.name == "kink-v1.36-gpu.tar"
    assert kink.archive_refs(gpu) == ["ghcr.io/vk8s/kink:v1.36-gpu"]
    # The same blobs: a node importing both stores the big layers once.
    assert layer_digests(gpu)[:2] == layer_digests(plain) and len(layer_digests(gpu)) == 3
    _, _, (_, _node, marker) = read_layout(gpu)
    assert kink.GPU_MARKER in marker.getnames()


def test_an_image_without_preloads_has_no_list(tmp_path: Path, bin_dir: Path, base_tar: Path) -> None:
    archive = kink.build_kink_image(bin_dir, "1.36.3", {}, False, tmp_path / "out")
    _, _, (_, node) = read_layout(archive)
    assert not any(name.startswith("var/lib/vk8s/images/") for name in node.getnames()), "nothing to preload"


def test_a_preload_archive_must_hold_its_ref(tmp_path: Path, bin_dir: Path, base_tar: Path) -> None:
    with pytest.raises(ImageBuildError, match=re.escape("does not hold registry.k8s.io/pause")):
        kink.build_kink_image(bin_dir, "1.36.3", {PAUSE: image_archive(tmp_path, ETCD)}, False, tmp_path / "out")
    with pytest.raises(ImageBuildError, match=r"archive of .* is missing"):
        kink.build_kink_image(bin_dir, "1.36.3", {PAUSE: tmp_path / "nope.tar"}, False, tmp_path / "out")


def test_kubeadm_of_another_version_is_refused(tmp_path: Path, bin_dir: Path, base_tar: Path) -> None:
    with pytest.raises(ImageBuildError, match=re.escape("not v1.35.0")):
        kink.build_kink_image(bin_dir, "1.35.0", {}, False, tmp_path / "out")


# vk8s-preload-images, with a `ctr` that records its calls and keeps the imported refs in a file.
FAKE_CTR = """
log=$FAKE_CTR_DIR/calls; store=$FAKE_CTR_DIR/images
touch "$store"
echo "$*" >>"$log"
shift 2  # --namespace k8s.io
case "$1 $2" in
  "version ") exit 0 ;;
  "images ls") cat "$store" ;;
  "images import") for a; do :; done; tr -d '\\n' <"$a" | sed 's/.*io.containerd.image.name":"\\([^"]*\\)".*/\\1/' >>"$store"; echo >>"$store" ;;
  "images label") grep -qxF "$3" "$store" ;;
esac
"""


@pytest.fixture
def preload_env(tmp_path: Path) -> dict[str, str]:
    fake = tmp_path / "fake-bin"
    script(fake / "ctr", FAKE_CTR)
    (tmp_path / "ctr-state").mkdir()
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for number, ref in enumerate((PAUSE, ETCD)):
        # index.json alone is what the fake ctr reads.
        index = {"manifests": [{"annotations": {"io.containerd.image.name": ref}}]}
        (images / f"{number}.tar").write_text(json.dumps(index, separators=(",", ":")))
        lines.append(f"{number}.tar\t{ref}\n")
    (images / "images.list").write_text("".join(lines))
    return {
        "PATH": f"{fake}:/usr/bin:/bin",
        "FAKE_CTR_DIR": str(tmp_path / "ctr-state"),
        "VK8S_PRELOAD_DIR": str(images),
        "VK8S_PRELOAD_STAMP": str(tmp_path / "containerd" / "vk8s-preloaded"),
        "VK8S_PRELOAD_MARKER": str(tmp_path / "run" / "images-preloaded"),
    }


def run_preload(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kink.FILES_DIR / "vk8s-preload-images")], env=env, capture_output=True, text=True, timeout=60
    )


def test_preload_imports_pins_and_marks(preload_env: dict[str, str], tmp_path: Path) -> None:
    result = run_preload(preload_env)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "ctr-state" / "calls").read_text().splitlines()
    imports = [c for c in calls if " images import " in c]
    directory = preload_env["VK8S_PRELOAD_DIR"]
    assert imports == [
        f"--namespace k8s.io images import --base-name {ref.rsplit(':', 1)[0]} --all-platforms --no-unpack --digests"
        f" {directory}/{n}.tar"
        for n, ref in enumerate((PAUSE, ETCD))
    ]
    assert [c for c in calls if " images label " in c] == [
        f"--namespace k8s.io images label {ref} io.cri-containerd.pinned=pinned" for ref in (PAUSE, ETCD)
    ]
    assert Path(preload_env["VK8S_PRELOAD_MARKER"]).read_text().split() == [PAUSE, ETCD]

    # containerd kept its content (a pod restart with the same volume): nothing is imported again.
    Path(preload_env["VK8S_PRELOAD_MARKER"]).unlink()
    (tmp_path / "ctr-state" / "calls").unlink()
    result = run_preload(preload_env)
    assert result.returncode == 0, result.stderr
    assert "already" in result.stderr
    assert not any(" images import " in c for c in (tmp_path / "ctr-state" / "calls").read_text().splitlines())
    assert Path(preload_env["VK8S_PRELOAD_MARKER"]).exists()


def test_preload_fails_without_marking_when_an_archive_lacks_its_ref(preload_env: dict[str, str]) -> None:
    listing = Path(preload_env["VK8S_PRELOAD_DIR"]) / "images.list"
    listing.write_text(listing.read_text().replace(ETCD, "registry.k8s.io/etcd:other"))
    result = run_preload(preload_env)
    assert result.returncode == 1
    assert "holds no image registry.k8s.io/etcd:other" in result.stderr
    assert not Path(preload_env["VK8S_PRELOAD_MARKER"]).exists()


@pytest.mark.parametrize("path", [kink.FILES_DIR / "vk8s-preload-images", kink.CUSTOMIZE_HOOK], ids=lambda p: p.name)
def test_the_image_scripts_lint_clean(path: Path) -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")
    result = subprocess.run(
        [str(shellcheck), "--severity=style", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert path.stat().st_mode & 0o111


def test_old_builds_are_pruned(tmp_path: Path, bin_dir: Path, base_tar: Path, cache_root: Path) -> None:
    archives = []
    for number in range(kink.KEEP_BUILDS + 2):
        (bin_dir / "kubectl").write_text(f"#!/bin/sh\necho {number}\n")
        archives.append(kink.build_kink_image(bin_dir, "1.36.3", {}, False, tmp_path / f"out{number}"))
    in_cache = sorted(cache_root.glob("images/*/kink.tar"))
    assert len(in_cache) == kink.KEEP_BUILDS
    newest = {kink.read_build_record(a).key for a in archives[-kink.KEEP_BUILDS :]}
    assert {path.parent.name for path in in_cache} == newest
    # What was placed elsewhere stays usable.
    assert all(archive.stat().st_size > 0 for archive in archives)

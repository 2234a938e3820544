"""The recipes without real toolchains: fake binaries stand in for the testbed's, a recorder for go."""

from __future__ import annotations

import io
import json
import re
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.archives import file_in
from tests.unit.images.support import kubeadm_script, script
from vk8s.images import builders, sources
from vk8s.images.errors import ImageBuildError

KUBEADM_LIST = [
    "registry.k8s.io/kube-apiserver:v1.36.3",
    "registry.k8s.io/kube-controller-manager:v1.36.3",
    "registry.k8s.io/kube-scheduler:v1.36.3",
    "registry.k8s.io/kube-proxy:v1.36.3",
    "registry.k8s.io/coredns/coredns:v1.14.2",
    "registry.k8s.io/pause:3.10.2",
    "registry.k8s.io/etcd:3.6.8-0",
]


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VK8S_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    kubeadm_script(directory, KUBEADM_LIST)
    script(directory / "kube-apiserver", 'echo "Kubernetes v1.36.3"')
    return directory


def layer_and_config(archive: Path) -> tuple[dict[str, tarfile.TarInfo], dict[str, Any]]:
    """The single layer's entries and the config of a one-layer archive."""
    with tarfile.open(archive) as layout:

        def blob(digest: str) -> bytes:
            return file_in(layout, f"blobs/sha256/{digest.removeprefix('sha256:')}")

        manifest = json.loads(blob(json.loads(file_in(layout, "index.json"))["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        (layer,) = [blob(entry["digest"]) for entry in manifest["layers"]]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return {info.name: info for info in tar.getmembers()}, config


def test_the_refs_are_what_kubeadm_lists(bin_dir: Path) -> None:
    assert builders.kubeadm_image_refs(bin_dir, "1.36.3") == KUBEADM_LIST


def test_a_kubeadm_of_another_version_is_refused(bin_dir: Path) -> None:
    with pytest.raises(ImageBuildError, match=re.escape("kubeadm is v1.36.3, not v1.35.0")):
        builders.kubeadm_image_refs(bin_dir, "v1.35.0")


def test_a_missing_binary_is_named(bin_dir: Path) -> None:
    with pytest.raises(ImageBuildError, match="kube-scheduler is missing from"):
        builders.build_image("registry.k8s.io/kube-scheduler:v1.36.3", bin_dir, "1.36.3")


def test_an_image_without_a_recipe_is_named(bin_dir: Path) -> None:
    with pytest.raises(ImageBuildError, match=re.escape("no recipe builds registry.k8s.io/kube-dns:v1")):
        builders.build_image("registry.k8s.io/kube-dns:v1", bin_dir, "1.36.3")


def test_a_control_plane_image_puts_the_binary_on_path(bin_dir: Path, cache_root: Path) -> None:
    archive = builders.build_image("registry.k8s.io/kube-apiserver:v1.36.3", bin_dir, "1.36.3")

    assert archive.parent.parent == cache_root / "images"
    assert archive.name == "kube-apiserver.tar" and archive.parent.name.startswith("v1.36.3-")
    entries, config = layer_and_config(archive)
    binary = entries["usr/local/bin/kube-apiserver"]
    assert binary.isreg() and stat.S_IMODE(binary.mode) == 0o755 and binary.uid == 0
    assert {"etc/passwd", "etc/group", "etc/nsswitch.conf", "tmp"} <= set(entries)
    assert stat.S_IMODE(entries["tmp"].mode) == 0o1777
    assert config["config"] == {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Labels": {"io.vk8s.built-from": "k8s.io/kubernetes v1.36.3 built from source"},
    }


def test_a_binary_of_another_version_is_refused(bin_dir: Path) -> None:
    script(bin_dir / "kube-apiserver", 'echo "Kubernetes v1.35.0"')

    with pytest.raises(ImageBuildError, match=re.escape("says 'Kubernetes v1.35.0', not Kubernetes v1.36.3")):
        builders.build_image("registry.k8s.io/kube-apiserver:v1.36.3", bin_dir, "1.36.3")


def test_the_toolbox_is_tagged_with_the_upstream_busybox_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders, "deb_candidate_version", lambda package: "1:1.35.0-4+deb12u1+b1")

    assert builders.toolbox_ref() == "vk8s.local/toolbox:1.35.0"


def go_module(directory: Path, version: str) -> Path:
    directory.mkdir()
    (directory / "go.mod").write_text(f"module vk8s.local/x\n\ngo 1.26.0\n\nrequire example.com/m {version}\n")
    return directory


Steps = list[tuple[list[str], Path | None]]


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Steps:
    """The (argv, cwd) of every build step, which is recorded instead of run."""
    recorded: Steps = []
    monkeypatch.setattr(sources, "run", lambda argv, cwd=None, env=None: recorded.append(([*map(str, argv)], cwd)))
    return recorded


def test_the_pinned_version_builds_in_the_module(tmp_path: Path, commands: Steps) -> None:
    module = go_module(tmp_path / "mod", "v1.2.3")
    (tmp_path / "out").mkdir()

    sources.go_build(module, "example.com/m", "v1.2.3", ".", tmp_path / "out" / "m")

    out = str(tmp_path / "out" / "m")
    assert commands == [(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "."], module)]


def test_another_version_builds_in_a_fresh_module(tmp_path: Path, commands: Steps) -> None:
    module = go_module(tmp_path / "mod", "v1.2.3")
    (module / "go.sum").write_text("example.com/m v1.2.3 h1:x\n")
    (module / "main.go").write_text("package main\n")
    (tmp_path / "out").mkdir()

    sources.go_build(module, "example.com/m", "v1.3.0", ".", tmp_path / "out" / "m")

    copy = tmp_path / "out" / "mod-module"
    assert [(argv[:3], cwd) for argv, cwd in commands] == [
        (["go", "mod", "tidy"], copy),
        (["go", "build", "-trimpath"], copy),
    ]
    floors = "require github.com/json-iterator/go v1.1.12\nrequire github.com/modern-go/reflect2 v1.0.2\n"
    assert (copy / "go.mod").read_text() == "module vk8s.local/x\ngo 1.26.0\nrequire example.com/m v1.3.0\n" + floors
    assert sorted(p.name for p in copy.iterdir()) == ["go.mod", "main.go"]
    assert (module / "go.mod").read_text().endswith("require example.com/m v1.2.3\n")


def etcd_source(tmp_path: Path, says: str) -> Path:
    """A go.etcd.io/etcd source tree whose version/version.go says `says`."""
    version_go = tmp_path / "etcd-source" / "version" / "version.go"
    version_go.parent.mkdir(parents=True)
    version_go.write_text(f'package version\n\nvar (\n\tMinClusterVersion = "3.0.0"\n\tVersion           = "{says}"\n)\n')
    return version_go.parent.parent


def test_etcd_3_4_is_the_single_module_kubernetes_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []
    source = etcd_source(tmp_path, "3.4.13")

    def go_module_source(module: str, version: str) -> Path:
        asked.append((module, version))
        return source

    monkeypatch.setattr(builders, "go_module_source", go_module_source)

    module_dir, module, version = builders._etcd_module("v3.4.13")

    pinned = "v0.5.0-alpha.5.0.20200910180754-dd1b699fc489"
    assert (module_dir, module, version) == (builders.IMAGES_DIR / "etcd-3.4", "go.etcd.io/etcd", pinned)
    assert asked == [("go.etcd.io/etcd", pinned)]
    kubernetes_go_mod = (builders.IMAGES_DIR.parent / "kubernetes" / "1.20" / "go.mod").read_text()
    assert f"go.etcd.io/etcd => go.etcd.io/etcd {pinned}" in kubernetes_go_mod, "the commit Kubernetes 1.20 pins"


def test_an_etcd_module_that_is_not_the_named_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builders, "go_module_source", lambda module, version: etcd_source(tmp_path, "3.4.14"))

    with pytest.raises(ImageBuildError, match=r"etcd-3.4 pins go.etcd.io/etcd v0.5.0-\S+, whose version.go says 3.4.14, not v3.4.13"):
        builders._etcd_module("v3.4.13")


def test_etcd_3_5_and_later_is_the_server_module_at_that_version() -> None:
    assert builders._etcd_module("v3.6.8") == (builders.IMAGES_DIR / "etcd", "go.etcd.io/etcd/server/v3", "v3.6.8")


@pytest.mark.parametrize(("ref", "release"), [("k8s.gcr.io/coredns:1.7.0", "v1.7.0"), ("registry.k8s.io/coredns/coredns:v1.14.2", "v1.14.2")])
def test_coredns_is_built_at_the_release_its_tag_names(ref: str, release: str, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[str, str]] = []

    def go_build(directory: Path, module: str, version: str, package: str, out: Path) -> Path:
        built.append((module, version))
        return script(out, "exit 0")

    monkeypatch.setattr(builders, "go_build", go_build)

    _, config = layer_and_config(builders.coredns_image(ref))

    assert built == [("github.com/coredns/coredns", release)]
    assert config["config"]["Labels"]["io.vk8s.built-from"].startswith(f"github.com/coredns/coredns {release} built from source")

"""The OCI archive writer: layout, digests, config, deterministic layers, and what skopeo and umoci
(the reference readers) make of the result."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from vk8s.images.oci import ImageConfig, split_ref, tar_tree, write_archive

REF = "registry.example:5000/team/app:v1.2.3"
CONFIG = ImageConfig(
    entrypoint=["/app"],
    cmd=["--serve"],
    env={"PATH": "/usr/bin:/bin", "MODE": "test"},
    workdir="/work",
    user="65535:65535",
    labels={"io.vk8s.built-from": "a unit test"},
    stop_signal="SIGRTMIN+3",
    architecture="amd64",
)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod)")
# The reference readers are optional test tools (apt: skopeo, umoci); the checks above do not need them.
SKOPEO, UMOCI = shutil.which("skopeo"), shutil.which("umoci")


def make_tree(root: Path) -> Path:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "app").write_bytes(b"#!/bin/sh\necho app\n")
    (root / "usr" / "bin" / "app").chmod(0o4755)
    os.link(root / "usr" / "bin" / "app", root / "usr" / "bin" / "app-again")
    (root / "bin").symlink_to("usr/bin")
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    os.mkfifo(root / "tmp" / "fifo")
    (root / "etc").mkdir()
    (root / "etc" / "zz").write_text("last\n")
    (root / "etc" / "aa").write_text("first\n")
    return root


def content(layout: tarfile.TarFile, name: str) -> bytes:
    member = layout.extractfile(name)
    assert member is not None, name
    return member.read()


def blob(layout: tarfile.TarFile, digest: str) -> bytes:
    data = content(layout, f"blobs/sha256/{digest.removeprefix('sha256:')}")
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == digest
    return data


def read_image(archive: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[bytes]]:
    """(index, manifest, config, layers), each blob checked against its digest."""
    with tarfile.open(archive) as layout:
        assert json.loads(content(layout, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        index = json.loads(content(layout, "index.json"))
        (entry,) = index["manifests"]
        manifest = json.loads(blob(layout, entry["digest"]))
        assert entry["size"] == len(blob(layout, entry["digest"]))
        config = json.loads(blob(layout, manifest["config"]["digest"]))
        layers = [blob(layout, layer["digest"]) for layer in manifest["layers"]]
        assert [layer["size"] for layer in manifest["layers"]] == [len(data) for data in layers]
    return index, manifest, config, layers


def members(layer: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return {info.name: info for info in tar.getmembers()}


def test_index_names_the_image_for_containerd_and_for_oci_readers(tmp_path: Path) -> None:
    archive = tmp_path / "app.tar"
    digest = write_archive(archive, REF, [make_tree(tmp_path / "tree")], CONFIG)

    index, manifest, _, _ = read_image(archive)

    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    (entry,) = index["manifests"]
    assert entry["digest"] == digest
    assert entry["mediaType"] == manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["annotations"] == {"io.containerd.image.name": REF, "org.opencontainers.image.ref.name": "v1.2.3"}
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar"]


def test_config_carries_the_runtime_settings_and_the_layer_diff_ids(tmp_path: Path) -> None:
    write_archive(tmp_path / "app.tar", REF, [make_tree(tmp_path / "tree")], CONFIG)

    _, manifest, config, _ = read_image(tmp_path / "app.tar")

    assert config["config"] == {
        "Entrypoint": ["/app"],
        "Cmd": ["--serve"],
        "Env": ["PATH=/usr/bin:/bin", "MODE=test"],
        "WorkingDir": "/work",
        "User": "65535:65535",
        "Labels": {"io.vk8s.built-from": "a unit test"},
        "StopSignal": "SIGRTMIN+3",
    }
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer["digest"] for layer in manifest["layers"]]}


def test_empty_settings_are_left_out_of_the_config(tmp_path: Path) -> None:
    write_archive(tmp_path / "app.tar", REF, [make_tree(tmp_path / "tree")], ImageConfig(entrypoint=["/app"]))

    assert read_image(tmp_path / "app.tar")[2]["config"] == {"Entrypoint": ["/app"]}


def test_a_tree_layer_keeps_types_modes_and_links_with_sorted_entries_and_no_times(tmp_path: Path) -> None:
    write_archive(tmp_path / "app.tar", REF, [make_tree(tmp_path / "tree")], CONFIG)

    (layer,) = read_image(tmp_path / "app.tar")[3]
    entries = members(layer)

    assert list(entries) == [
        "bin",
        "etc",
        "etc/aa",
        "etc/zz",
        "tmp",
        "tmp/fifo",
        "usr",
        "usr/bin",
        "usr/bin/app",
        "usr/bin/app-again",
    ]
    assert entries["bin"].issym() and entries["bin"].linkname == "usr/bin"
    assert entries["usr/bin/app"].isreg() and stat.S_IMODE(entries["usr/bin/app"].mode) == 0o4755
    assert entries["usr/bin/app-again"].islnk() and entries["usr/bin/app-again"].linkname == "usr/bin/app"
    assert entries["tmp"].isdir() and stat.S_IMODE(entries["tmp"].mode) == 0o1777
    assert entries["tmp/fifo"].isfifo()
    assert {info.mtime for info in entries.values()} == {0}
    assert {(info.uname, info.gname) for info in entries.values()} == {("", "")}


@as_root
def test_a_tree_layer_keeps_numeric_owners_and_device_nodes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    os.mknod(tree / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (tree / "owned").write_text("x")
    os.chown(tree / "owned", 1234, 5678)

    buffer = io.BytesIO()
    tar_tree(tree, buffer)
    entries = members(buffer.getvalue())

    assert entries["dev/null"].ischr() and (entries["dev/null"].devmajor, entries["dev/null"].devminor) == (1, 3)
    assert (entries["owned"].uid, entries["owned"].gid) == (1234, 5678)


def test_the_same_input_gives_the_same_bytes(tmp_path: Path) -> None:
    first, second = make_tree(tmp_path / "one"), make_tree(tmp_path / "two")
    os.utime(second / "etc" / "aa", (1_000_000, 1_000_000))

    digests = [write_archive(tmp_path / f"{n}.tar", REF, [tree], CONFIG) for n, tree in (("a", first), ("b", second))]

    assert digests[0] == digests[1]
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_a_tar_layer_is_used_as_it_is_and_identical_layers_are_one_blob(tmp_path: Path) -> None:
    tar = tmp_path / "base.tar"
    with tar.open("wb") as dest:
        tar_tree(make_tree(tmp_path / "tree"), dest)

    write_archive(tmp_path / "app.tar", REF, [tar, tmp_path / "tree", tar], CONFIG)

    _, manifest, _, layers = read_image(tmp_path / "app.tar")
    expected = f"sha256:{hashlib.sha256(tar.read_bytes()).hexdigest()}"
    assert [layer["digest"] for layer in manifest["layers"]] == [expected] * 3
    assert layers[0] == tar.read_bytes()
    with tarfile.open(tmp_path / "app.tar") as layout:
        assert len([name for name in layout.getnames() if name.startswith("blobs/sha256/")]) == 3


def test_a_compressed_tar_layer_is_refused(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(gzip.compress(b"not really a tar"))

    with pytest.raises(ValueError, match="uncompressed"):
        write_archive(tmp_path / "app.tar", REF, [layer], CONFIG)


@pytest.mark.parametrize("ref", ["app", "registry.example:5000/app", "app:v1@sha256:" + "0" * 64])
def test_a_ref_needs_a_tag(ref: str) -> None:
    with pytest.raises(ValueError, match="needs a tag"):
        split_ref(ref)


def test_a_ref_splits_at_the_tag_not_at_the_registry_port() -> None:
    assert split_ref(REF) == ("registry.example:5000/team/app", "v1.2.3")


@pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")
def test_skopeo_reads_the_archive(tmp_path: Path) -> None:
    assert SKOPEO
    write_archive(tmp_path / "app.tar", REF, [make_tree(tmp_path / "tree")], CONFIG)

    result = subprocess.run(
        [SKOPEO, "inspect", f"oci-archive:{tmp_path / 'app.tar'}"], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    inspected = json.loads(result.stdout)
    _, manifest, _, _ = read_image(tmp_path / "app.tar")
    assert inspected["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert inspected["Labels"] == {"io.vk8s.built-from": "a unit test"}


@as_root
@pytest.mark.skipif(UMOCI is None, reason="umoci is not installed")
def test_umoci_unpacks_the_tagged_image(tmp_path: Path) -> None:
    assert UMOCI
    write_archive(tmp_path / "app.tar", REF, [make_tree(tmp_path / "tree")], CONFIG)
    layout = tmp_path / "layout"
    with tarfile.open(tmp_path / "app.tar") as archive:
        archive.extractall(layout, filter="data")

    result = subprocess.run(
        [UMOCI, "unpack", "--image", f"{layout}:v1.2.3", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "usr" / "bin" / "app").read_bytes() == b"#!/bin/sh\necho app\n"
    assert os.readlink(rootfs / "bin") == "usr/bin"
    assert (rootfs / "usr" / "bin" / "app").stat().st_ino == (rootfs / "usr" / "bin" / "app-again").stat().st_ino

"""A dependency-free writer of OCI image archives (an image layout in one tar), the format
`ctr images import` and `skopeo ... oci-archive:` read. Layers stay uncompressed: the archives
never leave this machine, and containerd then unpacks them without gunzip."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
# ctr takes the full ref from containerd's annotation; other tools read the OCI tag.
CONTAINERD_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"
GZIP_MAGIC = b"\x1f\x8b"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (what a Dockerfile's ENTRYPOINT, ENV, USER... set)."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    architecture: str = GOARCH.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str
    size: int
    path: Path

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def split_ref(ref: str) -> tuple[str, str]:
    """(repository, tag) of `registry/path/name:tag`; a tag is required, digests are not refs here."""
    repository, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag or "@" in ref:
        raise ValueError(f"image ref {ref!r} needs a tag (and no digest)")
    return repository, tag


def write_archive(out: Path, ref: str, layers: Sequence[Path], config: ImageConfig) -> str:
    """Writes the image `ref` as an OCI archive at `out` and returns its manifest digest. A layer is
    a directory tree (tarred deterministically) or an uncompressed tar used as it is."""
    _, tag = split_ref(ref)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        layer_blobs = [_layer_blob(layer, Path(scratch) / f"layer{index}.tar") for index, layer in enumerate(layers)]
        config_blob = _json_blob(Path(scratch) / "config.json", CONFIG, _config_document(config, layer_blobs))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config_blob.descriptor(),
            "layers": [blob.descriptor() for blob in layer_blobs],
        }
        manifest_blob = _json_blob(Path(scratch) / "manifest.json", MANIFEST, manifest)
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    **manifest_blob.descriptor(),
                    "platform": {"architecture": config.architecture, "os": "linux"},
                    "annotations": {CONTAINERD_NAME: ref, REF_NAME: tag},
                }
            ],
        }
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
            _add_bytes(archive, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(archive, "index.json", _canonical(index))
            for directory in ("blobs", "blobs/sha256"):
                archive.addfile(_fixed(tarfile.TarInfo(directory), tarfile.DIRTYPE, 0o755))
            written: set[str] = set()
            for blob in [*layer_blobs, config_blob, manifest_blob]:
                if blob.digest not in written:  # two identical layers are one blob
                    written.add(blob.digest)
                    info = _fixed(tarfile.TarInfo(f"blobs/sha256/{blob.digest.removeprefix('sha256:')}"))
                    info.size = blob.size
                    with blob.path.open("rb") as source:
                        archive.addfile(info, source)
    return manifest_blob.digest


def tar_tree(root: Path, dest: BinaryIO) -> None:
    """Tars the tree under `root` (not `root` itself) in sorted order with mtime 0 and numeric
    owners, keeping modes, symlinks, hardlinks, device nodes and fifos."""
    with tarfile.open(fileobj=dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(root):
            info = tar.gettarinfo(path, arcname=path.relative_to(root).as_posix())
            if info is None:
                raise ValueError(f"{path}: a socket cannot go into a layer")
            info.mtime, info.uname, info.gname = 0, "", ""
            if info.isreg():
                with path.open("rb") as source:
                    tar.addfile(info, source)
            else:
                tar.addfile(info)


def _walk(directory: Path) -> Iterator[Path]:
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        yield Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))


def _layer_blob(layer: Path, scratch: Path) -> Blob:
    if layer.is_dir():
        with scratch.open("wb") as dest:
            tar_tree(layer, dest)
        layer = scratch
    else:
        with layer.open("rb") as source:
            if source.read(2) == GZIP_MAGIC:
                raise ValueError(f"{layer}: give layers as uncompressed tars")
    return _file_blob(layer, LAYER)


def _file_blob(path: Path, media_type: str) -> Blob:
    with path.open("rb") as source:
        digest = hashlib.file_digest(source, "sha256").hexdigest()
    return Blob(media_type, f"sha256:{digest}", path.stat().st_size, path)


def _json_blob(path: Path, media_type: str, document: dict[str, Any]) -> Blob:
    path.write_bytes(_canonical(document))
    return _file_blob(path, media_type)


def _config_document(config: ImageConfig, layers: Sequence[Blob]) -> dict[str, Any]:
    runtime = {
        "Entrypoint": list(config.entrypoint),
        "Cmd": list(config.cmd),
        "Env": [f"{name}={value}" for name, value in config.env.items()],
        "WorkingDir": config.workdir,
        "User": config.user,
        "Labels": dict(config.labels),
        "StopSignal": config.stop_signal,
    }
    return {
        "created": "1970-01-01T00:00:00Z",
        "architecture": config.architecture,
        "os": "linux",
        "config": {key: value for key, value in runtime.items() if value},
        # Uncompressed layers: each diff id is the layer's own digest.
        "rootfs": {"type": "layers", "diff_ids": [blob.digest for blob in layers]},
    }


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _fixed(info: tarfile.TarInfo, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info.type, info.mode, info.mtime = kind, mode, 0
    return info


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _fixed(tarfile.TarInfo(name))
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


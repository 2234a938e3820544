"""The image cache: `<cache>/images/<key>/<name>.tar`, where the key names a version and hashes
every input, so a changed input builds a new archive beside the old one."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vk8s.testbed.config import cache_dir

log = logging.getLogger("vk8s.images")
# Bump when a recipe changes what it puts into an image: every key changes with it.
RECIPE_REVISION = "1"
_built: list[Path] = []


def builds_done() -> int:
    """Archives this process has built (not found cached) so far: tells a step that built from one that did not."""
    return len(_built)


def images_dir() -> Path:
    return cache_dir() / "images"


def cache_key(version: str, inputs: Sequence[str]) -> str:
    digest = hashlib.sha256("\0".join([RECIPE_REVISION, *inputs]).encode()).hexdigest()
    return f"{version}-{digest[:12]}"


def file_fingerprint(path: Path) -> str:
    """Cheap identity of a large input (a rebuilt binary gets a new mtime): no hashing on warm runs."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def cached(name: str, key: str, build: Callable[[Path], None], *, suffix: str = ".tar") -> Path:
    """The archive `<key>/<name>.tar` (or another file, by `suffix`: "" for an executable), built by
    `build(tmp_path)` unless present. A lock file makes parallel callers wait for one build; the
    rename makes a half-written archive invisible."""
    archive = images_dir() / key / f"{name}{suffix}"
    if archive.exists():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    with (archive.parent / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if archive.exists():
            return archive
        log.info("building %s (%s)", name, key)
        started = time.monotonic()
        tmp = archive.with_name(f"{archive.name}.tmp")
        try:
            build(tmp)
            tmp.rename(archive)
        finally:
            tmp.unlink(missing_ok=True)
        _built.append(archive)
        log.info("built %s in %.1fs, %.1f MB", archive, time.monotonic() - started, archive.stat().st_size / 1e6)
    return archive


def link_into_place(source: Path, target: Path) -> None:
    """`source` at `target`: a hard link where the filesystem allows, else a copy; renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and target.samefile(source):
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # another filesystem
        shutil.copyfile(source, tmp)
    tmp.replace(target)

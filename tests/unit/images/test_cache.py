"""The image cache: one build per key, no half-written archive, parallel callers wait for one build."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from vk8s.images.cache import cache_key, cached


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VK8S_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_an_archive_is_built_once_per_key(cache_root: Path) -> None:
    builds: list[Path] = []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        tmp.write_text("image")

    first = cached("app", "v1-abc", build)
    second = cached("app", "v1-abc", build)

    assert first == second == cache_root / "images" / "v1-abc" / "app.tar"
    assert first.read_text() == "image"
    assert builds == [first.with_name("app.tar.tmp")]


def test_a_failed_build_leaves_nothing_behind(cache_root: Path) -> None:
    def build(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        cached("app", "v1-abc", build)

    assert sorted(p.name for p in (cache_root / "images" / "v1-abc").iterdir()) == ["app.lock"]


def test_parallel_callers_wait_for_one_build() -> None:
    builds: list[str] = []
    started = threading.Event()

    def build(tmp: Path) -> None:
        builds.append(threading.current_thread().name)
        started.set()
        time.sleep(0.2)  # the second caller arrives while this build holds the lock
        tmp.write_text("image")

    results: dict[str, Path] = {}

    def call(name: str) -> None:
        results[name] = cached("app", "v1-abc", build)

    first = threading.Thread(target=call, args=("first",), name="first")
    first.start()
    assert started.wait(5)
    second = threading.Thread(target=call, args=("second",), name="second")
    second.start()
    first.join(5)
    second.join(5)

    assert builds == ["first"]
    assert results["first"] == results["second"]
    assert results["second"].read_text() == "image"


def test_the_key_names_the_version_and_changes_with_any_input() -> None:
    key = cache_key("v1.36.3", ["registry.k8s.io/kube-apiserver:v1.36.3", "binary:1"])

    assert key.startswith("v1.36.3-")
    assert key == cache_key("v1.36.3", ["registry.k8s.io/kube-apiserver:v1.36.3", "binary:1"])
    assert key != cache_key("v1.36.3", ["registry.k8s.io/kube-apiserver:v1.36.3", "binary:2"])


def test_an_executable_is_cached_under_its_own_name(cache_root: Path) -> None:
    def build(tmp: Path) -> None:
        tmp.write_text("#!/bin/sh\n")

    built = cached("tool", cache_key("v1", ["a"]), build, suffix="")

    assert built == cache_root / "images" / cache_key("v1", ["a"]) / "tool"
    assert built.read_text() == "#!/bin/sh\n"

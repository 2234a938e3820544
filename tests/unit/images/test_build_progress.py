"""Image builds say up front what they ensure and roughly how long (this machine's last builds),
then step k of n with the elapsed time; a step found cached says so."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from vk8s.images import cache
from vk8s.images.progress import BuildSteps


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_steps_announce_the_plan_then_count_built_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VK8S_CACHE_DIR", str(tmp_path / "cache"))
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps({"etcd": 90, "pause": 30}))
    clock, out = Clock(), io.StringIO()
    steps = BuildSteps("images of Kubernetes v1.36.3", ["etcd", "pause", "coredns"], stream=out, durations_file=durations, clock=clock)

    def build(tmp: Path) -> None:
        clock.now += 75
        tmp.write_text("an archive")

    steps.announce()
    first = steps.run("etcd", lambda: cache.cached("etcd", "k1", build))
    again = steps.run("pause", lambda: cache.cached("etcd", "k1", build))
    lines = out.getvalue().splitlines()

    assert first == again and first.read_text() == "an archive"
    # 90 + 30 from the file, 60 for the step never built here.
    assert lines[0] == (
        "images of Kubernetes v1.36.3: 3 to ensure (etcd, pause, coredns); if none is cached, roughly 3m00s here "
        "(this machine's last builds), longer on a busy machine"
    )
    assert lines[1:] == [
        "step 1/3: etcd (elapsed 0s)",
        "step 1/3: etcd built in 1m15s (elapsed 1m15s)",
        "step 2/3: pause (elapsed 1m15s)",
        "step 2/3: pause cached (elapsed 1m15s)",
    ]
    assert json.loads(durations.read_text()) == {"etcd": 75.0, "pause": 30.0}, "the build's time is the next estimate"


def test_a_failing_step_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VK8S_CACHE_DIR", str(tmp_path / "cache"))
    durations = tmp_path / "durations.json"
    steps = BuildSteps("images", ["etcd"], stream=io.StringIO(), durations_file=durations, clock=Clock())

    def broken(tmp: Path) -> None:
        raise RuntimeError("go build failed")

    with pytest.raises(RuntimeError, match="go build failed"):
        steps.run("etcd", lambda: cache.cached("etcd", "k1", broken))
    assert not durations.exists()

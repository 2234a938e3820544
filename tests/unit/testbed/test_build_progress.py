"""deploy/testbed/build.sh says up front what a build will do and roughly how long, then step k of n
with the elapsed time: plain lines when stderr is not a terminal (CI), a moving bar when it is.

Run against a cache of its own whose bin/ holds every binary but the GPU plugin (links to the built
ones), sharing the machine's Go caches, so the one step left compiles in seconds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vk8s.testbed import lifecycle
from vk8s.testbed.config import REPO_ROOT, cache_dir

BUILD = REPO_ROOT / "deploy" / "testbed" / "build.sh"
STEP = "vk8s-gpu-plugin"


@pytest.fixture
def cache_missing_one_step(tmp_path: Path) -> tuple[Path, Path]:
    built = lifecycle.ensure_binaries()
    cache = tmp_path / "cache"
    bin_dir = cache / "testbed" / built.parent.name / "bin"
    bin_dir.mkdir(parents=True)
    (cache / "go").symlink_to(cache_dir() / "go")
    for entry in built.iterdir():
        if entry.name.startswith(STEP) or entry.name.endswith(".tmp"):
            continue
        if entry.suffix == ".flags":
            shutil.copy(entry, bin_dir / entry.name)
        else:
            (bin_dir / entry.name).symlink_to(entry)
    return cache, bin_dir


def build(cache: Path, *, tty: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VK8S_CACHE_DIR": str(cache)}
    argv = ["bash", str(BUILD)]
    if tty:  # stderr a terminal, as for a person running it
        argv = ["script", "-qefc", f"bash {BUILD}", "/dev/null"]
    result = subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
    # Decoded by hand: text mode would turn the bar's carriage returns into newlines.
    return subprocess.CompletedProcess(argv, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_plain_lines_say_the_plan_then_each_step_with_elapsed_time(cache_missing_one_step: tuple[Path, Path]) -> None:
    cache, bin_dir = cache_missing_one_step
    result = build(cache)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split("\n")[-1] == str(bin_dir)
    lines = result.stderr.split("\n")[:-1]
    assert re.fullmatch(rf"testbed build: 1 step\(s\) to build: {STEP}; roughly \d+s on 2 quiet cores.*", lines[0]), lines
    assert re.fullmatch(rf"testbed build: step 1/1: {STEP} \(\w+\) \(elapsed 0s of ~\d+s\)", lines[1]), lines
    assert re.fullmatch(r"testbed build: done in \d+s \(estimated ~\d+s\); cache size .*", lines[-1]), lines
    assert "\r" not in result.stderr
    # The step's time on this machine is the next estimate; built, nothing is left to do or say.
    took = dict(line.split() for line in (cache / "testbed" / "durations").read_text().splitlines())
    assert int(took[STEP]) >= 0
    again = build(cache)
    assert (again.returncode, again.stderr) == (0, "")


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a terminal")
def test_a_terminal_gets_a_bar(cache_missing_one_step: tuple[Path, Path]) -> None:
    cache, _ = cache_missing_one_step
    result = build(cache, tty=True)
    assert result.returncode == 0, result.stdout
    assert re.search(rf"\rtestbed build: \[[# ]{{24}}\] step 1/1 {STEP} \(\w+\)\s+elapsed \d+s of ~\d+s", result.stdout)
    assert "step 1/1:" not in result.stdout  # no plain line on a terminal

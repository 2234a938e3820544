"""Processes a sandbox starts are tracked by pid file and stopped with the pod or the testbed."""

from __future__ import annotations

import time
from pathlib import Path

from vk8s.testbed.node_sim import processes
from vk8s.testbed.node_sim.sandbox import stop_every_sandbox, stop_processes


def sleeper(run_dir: Path, name: str) -> int:
    return processes.start(run_dir, name, ["/bin/sleep", "60"], log=run_dir.parent / "logs" / f"{name}.log")


def test_stopping_a_sandbox_stops_its_processes_and_clears_run(tmp_path: Path) -> None:
    sandbox = tmp_path / "ns" / "pvc-1"
    pid = sleeper(sandbox / "run", "kube-apiserver")
    assert processes.running(sandbox / "run", "kube-apiserver") == pid

    stopped = stop_processes(sandbox)

    assert stopped == ["kube-apiserver"]
    assert processes.running(sandbox / "run", "kube-apiserver") is None
    assert not (sandbox / "run").exists()
    assert sandbox.exists()


def test_testbed_down_stops_every_sandbox(tmp_path: Path) -> None:
    run_dirs = [tmp_path / "a" / "pvc-1" / "run", tmp_path / "b" / "pod-x" / "run"]
    for run_dir in run_dirs:
        sleeper(run_dir, "kwok")

    stop_every_sandbox(tmp_path)

    assert all(processes.running(run_dir, "kwok") is None for run_dir in run_dirs)


def test_a_recycled_pid_is_not_taken_for_the_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    pid = sleeper(run_dir, "kwok")
    pid_file = run_dir / "kwok.pid"
    pid_file.write_text(f"{pid} {time.time_ns()}\n")  # same pid, another start time

    assert processes.running(run_dir, "kwok") is None
    processes.stop_all(run_dir)  # leaves the real process alone: it is not the one recorded
    pid_file.write_text(f"{pid} {processes.start_time(pid)}\n")
    processes.stop_all(run_dir)
    assert processes.running(run_dir, "kwok") is None

"""Removing what a real tier left: every process in its cgroups, then the cgroups themselves.

Everything the supervisor starts, and every container the kubelets start, lives under the
testbed's cgroup (`node.cgroup_root`); once those processes are gone, the testbed's network and
mount namespaces, the bridge, veths and mounts go with them. `python -m vk8s.testbed.real.sweep
PREFIX` runs in a mount namespace of its own so it can mount the hierarchies the machine does not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vk8s.testbed.real.namespaces import CGROUP_ROOT, mount_cgroups

_KILL_TIMEOUT = 20.0


def testbed_cgroups(prefix: str) -> list[Path]:
    """Every directory of the testbed in every mounted hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        top = hierarchy / prefix.lstrip("/")
        if top.is_dir():
            found += [Path(root) for root, _, _ in os.walk(top)]
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def processes(cgroups: list[Path], spare: int | None = None) -> set[int]:
    pids: set[int] = set()
    for cgroup in cgroups:
        with contextlib.suppress(FileNotFoundError):
            pids |= {int(line) for line in (cgroup / "cgroup.procs").read_text().split()}
    pids.discard(spare or 0)
    return pids


def kill_and_remove(prefix: str, spare: int | None = None) -> list[str]:
    """SIGKILLs every process of the testbed but `spare`, removes its cgroups; returns what stays."""
    deadline = time.monotonic() + _KILL_TIMEOUT
    while pids := processes(testbed_cgroups(prefix), spare):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return [f"process {pid}" for pid in sorted(pids)]
        time.sleep(0.1)
    left = []
    for cgroup in testbed_cgroups(prefix):
        if spare is not None and str(spare) in (cgroup / "cgroup.procs").read_text().split():
            continue
        try:
            cgroup.rmdir()
        except OSError as exc:
            left.append(f"{cgroup}: {exc.strerror}")
    return left


def sweep(prefix: str) -> list[str]:
    """From outside the testbed (it may have crashed): kills and removes in a private mount namespace."""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-m", __name__, prefix],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return [f"sweep failed: {result.stderr.strip()}"]
    return [line for line in result.stdout.splitlines() if line]


def main() -> int:
    mount_cgroups()
    for line in kill_and_remove(sys.argv[1]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

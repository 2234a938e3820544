"""Starting a detached testbed, stopping it, and telling what runs: shared by the CLI and test fixtures."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from vk8s.testbed.config import BUILD_SCRIPT, READY_TIMEOUT, FleetSpec, ReadyInfo, StateLayout, pinned_versions
from vk8s.testbed.errors import AlreadyRunning, TestbedError
from vk8s.testbed.node_sim.sandbox import stop_every_sandbox


def ensure_binaries() -> Path:
    """Runs build.sh, which builds what is missing (progress on stderr) and prints the bin directory."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise TestbedError(f"{BUILD_SCRIPT} failed with {result.returncode}; its output is above")
    return Path(result.stdout.strip().splitlines()[-1])


def ensure_images(fleet: FleetSpec, bin_dir: Path) -> None:
    """The real tier's images, built before the supervisor starts (a cold build takes minutes)."""
    if fleet.runtime != "real":
        return
    from vk8s.testbed.real import preflight
    from vk8s.testbed.real.tier import host_images

    if reason := preflight.problem():
        raise TestbedError(f"this machine cannot run the real tier: {reason}; `--runtime kwok` works here")
    host_images(bin_dir, pinned_versions()["KUBERNETES_VERSION"], fleet.vnode_images)


def supervisor_pid(layout: StateLayout) -> int | None:
    """The pid of the supervisor holding this state directory, or None when none does."""
    try:
        handle = layout.pid_file.open()
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else None
        return None


def read_ready(layout: StateLayout) -> ReadyInfo | None:
    try:
        return ReadyInfo.model_validate_json(layout.ready_file.read_text())
    except (FileNotFoundError, ValidationError):
        return None


def ready_for_kubeconfig(path: Path) -> ReadyInfo | None:
    """The running testbed whose admin kubeconfig `path` is, if it is one (`vk8s testbed up` writes
    it into the state directory)."""
    ready = read_ready(StateLayout(path.parent))
    return ready if ready is not None and Path(ready.kubeconfig) == path.absolute() else None


def start_detached(
    layout: StateLayout,
    fleet: FleetSpec,
    bin_dir: Path,
    *,
    owner_pid: int | None = None,
    timeout: float = READY_TIMEOUT,
) -> ReadyInfo:
    """Starts a supervisor in a session of its own and returns once its testbed is ready.

    With `owner_pid` the testbed stops by itself once that process is gone.
    """
    if (pid := supervisor_pid(layout)) is not None:
        raise AlreadyRunning(f"a testbed already runs in {layout.root} (supervisor pid {pid})")
    ensure_images(fleet, bin_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.ready_file.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "vk8s.testbed", "serve",
        f"--state-dir={layout.root}", f"--bin-dir={bin_dir}", f"--fleet={fleet.model_dump_json()}",
    ]  # fmt: skip
    if owner_pid is not None:
        command.append(f"--owner-pid={owner_pid}")
    # posix_spawn rather than Popen: the supervisor outlives this process, and a Popen object
    # dropped while its child runs warns (an error under pytest).
    pid = os.posix_spawn(
        sys.executable,
        command,
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(layout.supervisor_log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    deadline = time.monotonic() + timeout
    while (ready := read_ready(layout)) is None or ready.supervisor_pid != pid:
        if (code := _reap(pid)) is not None:
            raise TestbedError(f"the testbed supervisor exited with {code}:\n{_tail(layout.supervisor_log)}")
        if time.monotonic() > deadline:
            _kill_group(pid)
            _reap(pid, block=True)
            raise TestbedError(f"the testbed is not ready after {timeout:.0f}s:\n{_tail(layout.supervisor_log)}")
        time.sleep(0.1)
    return ready


def stop(layout: StateLayout, timeout: float = 60.0) -> bool:
    """Stops the supervisor of this state directory (if any) and removes the directory.

    Returns whether a supervisor was running.
    """
    pid = supervisor_pid(layout)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while supervisor_pid(layout) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if supervisor_pid(layout) is not None:
            _kill_group(pid)
        else:
            # What is left of its group goes too: a command kwok was running in a sandbox (an exec
            # shim) outlives kwok and would start inner control-plane processes after the
            # sandboxes were stopped.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _reap(pid, block=True)
    # Inner control planes of simulated vNodes run in sessions of their own, outside the group.
    stop_every_sandbox(layout.sandboxes)
    # A real tier's containers and cgroups, should its supervisor have died before removing them.
    if left := sweep_real_tier(layout):
        raise TestbedError(f"could not remove everything of the real tier: {'; '.join(left)}")
    shutil.rmtree(layout.root, ignore_errors=True)
    return pid is not None


def sweep_real_tier(layout: StateLayout) -> list[str]:
    from vk8s.testbed.real import node, sweep

    prefix = node.cgroup_root(layout)
    if not any(Path(f"/sys/fs/cgroup/{hierarchy}{prefix}").exists() for hierarchy in ("pids", "memory", "cpu")):
        return []
    return sweep.sweep(prefix)


@dataclass(frozen=True)
class Status:
    supervisor_pid: int | None
    ready: ReadyInfo | None
    alive: dict[str, bool]


def status(layout: StateLayout) -> Status:
    pid = supervisor_pid(layout)
    ready = read_ready(layout) if pid is not None else None
    alive = {name: _alive(child) for name, child in ready.components.items()} if ready else {}
    return Status(supervisor_pid=pid, ready=ready, alive=alive)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _reap(pid: int, block: bool = False) -> int | None:
    """The exit status of our child `pid` once it has exited, else None; None too if not our child."""
    try:
        reaped, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if reaped else None


def _kill_group(pid: int) -> None:
    # A detached supervisor leads its own process group, which holds every component it started.
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""

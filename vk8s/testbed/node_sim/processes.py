"""Detached processes of a sandbox, tracked by pid files in its run/ directory.

A pid file holds the pid and the process's start time (from /proc), so a recycled pid is never
taken for the process, and neither is a zombie.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Fields after the parenthesised command: state is the first, start time the 20th.
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _read(pid_file: Path) -> int | None:
    try:
        pid_text, started = pid_file.read_text().split()
    except (FileNotFoundError, ValueError):
        return None
    pid = int(pid_text)
    return pid if start_time(pid) == started else None


def running(run_dir: Path, name: str) -> int | None:
    """The pid of `name` if the process its pid file names still runs."""
    return _read(run_dir / f"{name}.pid")


def start(run_dir: Path, name: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None) -> int:
    """Starts `argv` in a session of its own (it outlives the shim and the exec) and records it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    # posix_spawn, not Popen: nothing here waits for the process, which belongs to the sandbox now.
    pid = os.posix_spawn(
        argv[0],
        list(argv),
        {**os.environ, **(env or {})},
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    (run_dir / f"{name}.pid").write_text(f"{pid} {start_time(pid)}\n")
    return pid


def stop(run_dir: Path, name: str, timeout: float = 10.0) -> None:
    pid_file = run_dir / f"{name}.pid"
    pid = _read(pid_file)
    if pid is not None:
        _terminate([pid], timeout)
    pid_file.unlink(missing_ok=True)


def stop_all(run_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stops every process recorded in `run_dir`; returns their names."""
    pid_files = sorted(run_dir.glob("*.pid"))
    pids = [pid for pid in (_read(path) for path in pid_files) if pid is not None]
    _terminate(pids, timeout)
    for path in pid_files:
        path.unlink(missing_ok=True)
    return [path.stem for path in pid_files]


def stop_naming(directory: Path, timeout: float = 10.0) -> list[int]:
    """Stops every process whose command line names a path under `directory`, recorded or not: a
    pod's sandbox removed while its successor (same volume, same directory) was starting lost the
    pid file of a process the successor had just started, and that process ran on unrecorded."""
    marker = f"{directory.absolute()}/".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    _terminate(pids, timeout)
    return pids


def _terminate(pids: list[int], timeout: float) -> None:
    started = {pid: start_time(pid) for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if start_time(pid) is not None and start_time(pid) == started[pid]]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        # Ours only when this process started it (tests); otherwise init reaps it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

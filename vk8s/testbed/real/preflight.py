"""Whether this machine can run the real tier: one line naming the first check that fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from vk8s.testbed.real.namespaces import CGROUP_ROOT

TOOLS = ("containerd", "ctr", "runc", "nsenter", "unshare", "ip", "mount")


def problem() -> str | None:
    """None when the real tier can run here, else what is missing."""
    if os.geteuid() != 0:
        return "the real tier needs root (it makes namespaces, mounts and cgroups)"
    if missing := [tool for tool in TOOLS if shutil.which(tool) is None]:
        return f"missing {', '.join(missing)} (bash scripts/install-system-deps installs them)"
    if not (CGROUP_ROOT / "pids" / "cgroup.procs").exists() or not os.access(CGROUP_ROOT / "pids", os.W_OK):
        return f"no writable cgroup v1 pids hierarchy at {CGROUP_ROOT / 'pids'}"
    if not Path("/usr/lib/cni/bridge").exists():
        return "no CNI plugins in /usr/lib/cni (Debian package containernetworking-plugins)"
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make network and mount namespaces: {probe.stderr.strip()}"
    return None

"""Entering the testbed's own network and mount namespaces, and the bridge the real tier lives on."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from ipaddress import IPv4Network
from pathlib import Path

from vk8s.testbed.config import HOST_POD_NETWORK, NODE_NETWORK, VNODE_IP_POOL
from vk8s.testbed.errors import TestbedError

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
BRIDGE = "vk8s0"
# Unix sockets have a 108-byte path limit that state directories exceed: each testbed mounts its
# own tmpfs here, seen only inside its mount namespace.
SOCKET_DIR = Path("/run/vk8s-testbed")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Hierarchies the kubelet and systemd in a vNode expect; those the machine leaves unmounted are
# mounted inside the testbed only (a vNode's systemd would otherwise mount them unscoped).
CGROUP_V1 = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb", "net_cls",
             "net_prio", "perf_event")  # fmt: skip


def gateway(network: IPv4Network) -> str:
    return str(network[1])


def enter_private_namespaces() -> None:
    """Moves this process into a new network and mount namespace; children inherit both.

    Must run before any thread starts: unshare(CLONE_NEWNS) refuses a multi-threaded process.
    """
    if threading.active_count() != 1:
        raise TestbedError("the real tier must enter its namespaces before any thread starts")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET) != 0:
        raise TestbedError(f"unshare of the network and mount namespaces failed: {os.strerror(ctypes.get_errno())}")
    # Nothing mounted from here on reaches the machine's namespace.
    _run("mount", "--make-rslave", "/")
    _run("ip", "link", "set", "lo", "up")
    SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", "mode=700", "vk8s-testbed", str(SOCKET_DIR))
    mount_cgroups()


def mount_cgroups() -> None:
    """A tmpfs over /sys/fs/cgroup with every v1 controller, name=systemd and cgroup2 (as unified)."""
    _run("mount", "-t", "tmpfs", "-o", "mode=755", "cgroup", str(CGROUP_ROOT))
    for controller in CGROUP_V1:
        target = CGROUP_ROOT / controller
        target.mkdir()
        _run("mount", "-t", "cgroup", "-o", controller, "cgroup", str(target))
    systemd = CGROUP_ROOT / "systemd"
    systemd.mkdir()
    _run("mount", "-t", "cgroup", "-o", "none,name=systemd", "cgroup", str(systemd))
    unified = CGROUP_ROOT / "unified"
    unified.mkdir()
    _run("mount", "-t", "cgroup2", "cgroup2", str(unified))


def create_bridge(node_addresses: list[str]) -> None:
    """One bridge for nodes, host pods and vNodes; it routes between their networks."""
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    for network in (NODE_NETWORK, HOST_POD_NETWORK, VNODE_IP_POOL):
        _run("ip", "addr", "add", f"{gateway(network)}/{network.prefixlen}", "dev", BRIDGE)
    for address in node_addresses:
        _run("ip", "addr", "add", f"{address}/{NODE_NETWORK.prefixlen}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    # Per network namespace: changes nothing outside the testbed.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.returncode}")

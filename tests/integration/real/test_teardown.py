"""`down` leaves nothing of a real tier on the machine, also after its supervisor was killed: no
process, mount, cgroup, veth or network namespace (each listed before, during and after)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from kubernetes.aio import client

from tests.integration.real.test_real_nodes import toolbox_pod
from tests.support.pods import running_pod
from tests.support.wait import eventually
from vk8s.testbed import lifecycle
from vk8s.testbed.config import FleetSpec, StateLayout
from vk8s.testbed.fixtures import create_namespace, new_api_client
from vk8s.testbed.real.node import cgroup_root

ONE_NODE = FleetSpec(nodes=1, gpus_per_node=2, runtime="real")
# Lists the testbed's cgroups in every hierarchy, including those the machine leaves unmounted.
_LIST_CGROUPS = (
    "import sys; from vk8s.testbed.real.namespaces import mount_cgroups; "
    "from vk8s.testbed.real.sweep import testbed_cgroups; mount_cgroups(); "
    "print('\\n'.join(map(str, testbed_cgroups(sys.argv[1]))))"
)


@dataclass(frozen=True)
class Traces:
    processes: frozenset[str]
    mounts: frozenset[str]
    cgroups: frozenset[str]
    # Network namespaces of the testbed's processes (its own and its pods').
    network_namespaces: frozenset[str]


def traces(layout: StateLayout) -> Traces:
    """What of this testbed the machine's own namespaces can see."""
    root = str(layout.root)
    processes, namespaces = set(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroup = (entry / "cgroup").read_text()
            if root in cmdline or cgroup_root(layout) in cgroup:
                processes.add(f"{entry.name} {cmdline.strip()}")
                namespaces.add(os.readlink(entry / "ns" / "net"))
        except OSError:
            continue
    mounts = {line for line in Path("/proc/self/mountinfo").read_text().splitlines() if root in line}
    listed = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _LIST_CGROUPS, cgroup_root(layout)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Traces(
        processes=frozenset(processes),
        mounts=frozenset(mounts),
        cgroups=frozenset(line for line in listed.stdout.splitlines() if line),
        network_namespaces=frozenset(namespaces),
    )


def pinned_network_namespaces() -> set[str]:
    """What `ip netns` lists: containerd would pin pod namespaces there as cni-<id>."""
    directory = Path("/run/netns")
    return {entry.name for entry in directory.iterdir() if entry.name.startswith("cni-")} if directory.exists() else set()


def machine_links() -> set[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":", 2)[1].strip().split("@")[0] for line in links.splitlines()}


@pytest.fixture
def layout(tmp_path: Path, real_control_plane: object) -> Iterator[StateLayout]:
    """A testbed of the test's own (the session's real tier proves the machine can run one)."""
    layout = StateLayout(tmp_path / "testbed")
    yield layout
    lifecycle.stop(layout)


async def start_with_a_gpu_pod(layout: StateLayout) -> None:
    ready = lifecycle.start_detached(layout, ONE_NODE, lifecycle.ensure_binaries(), owner_pid=os.getpid())
    api = await new_api_client(Path(ready.kubeconfig))
    async with api:
        namespace = await create_namespace(api)
        await client.CoreV1Api(api).create_namespaced_pod(namespace, cast(client.V1Pod, toolbox_pod("gpu", "gpu-node-0", gpus=1)))
        await running_pod(client.CoreV1Api(api), namespace, "gpu")


async def _settled(layout: StateLayout, before: Traces) -> Traces | None:
    current = traces(layout)
    return current if current == before else None


@pytest.mark.parametrize("supervisor", ["stopped", "killed"])
async def test_down_leaves_nothing(layout: StateLayout, supervisor: str) -> None:
    before, pinned_before = traces(layout), pinned_network_namespaces()

    await start_with_a_gpu_pod(layout)
    during = traces(layout)
    links_during = machine_links()
    if supervisor == "killed":
        pid = lifecycle.supervisor_pid(layout)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    lifecycle.stop(layout)
    # Killed shims are the machine's init's children by then; it reaps them in its own time.
    after = await eventually(lambda: _settled(layout, before), "the machine to reap what was killed", 30)

    # The checks see the testbed while it runs (so they can fail) ...
    assert during.processes and during.cgroups and during.mounts == before.mounts
    own_namespaces = during.network_namespaces - {os.readlink("/proc/self/ns/net")}
    assert len(own_namespaces) >= 2, "the testbed's namespace and its pod's"
    # ... and nothing of it afterwards; its bridge and veths never showed in the machine's namespace.
    # Namespaces live only through processes (none left, above) or pins: the pods' are pinned under
    # the node's state directory (gone), never in the machine's /run/netns.
    assert after == before
    assert not pinned_network_namespaces() - pinned_before
    assert "vk8s0" not in links_during
    assert not layout.root.exists()

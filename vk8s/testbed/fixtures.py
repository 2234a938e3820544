"""Control planes for tests, without pytest: the conftests wrap these in fixtures.

Which cluster: KUBECONFIG set -> that cluster; else a working Docker engine -> K3s in a container;
else the local testbed: in $VK8S_TEST_STATE_DIR if set (reused if already running there), else a
private one for the session (parallel sessions on one machine do not share it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

from libs.kube import name_of
from vk8s.testbed import crds, lifecycle
from vk8s.testbed.config import READY_TIMEOUT, FleetSpec, ReadyInfo, StateLayout

# Enough for the tests and quick to start; `vk8s testbed up` defaults to the demo's 4 x 8 GPUs.
TEST_FLEET = FleetSpec(nodes=2, gpus_per_node=8)


@dataclass(frozen=True)
class ControlPlane:
    kubeconfig: Path
    source: Literal["kubeconfig", "k3s", "testbed"]
    # Where exec into a simulated pod runs: <sandbox_root>/<namespace>/<pod>; None off the testbed.
    sandbox_root: Path | None = None
    # The testbed's own simulated hosts (tests may add more nodes); None off the testbed.
    fleet: FleetSpec | None = None

    @classmethod
    def of_testbed(cls, ready: ReadyInfo) -> ControlPlane:
        return cls(Path(ready.kubeconfig), "testbed", Path(ready.sandbox_root), ready.fleet)


@contextlib.contextmanager
def control_plane(scratch: Path) -> Iterator[ControlPlane]:
    """The cluster for one test session; `scratch` is a directory the session owns."""
    if kubeconfig := os.environ.get("KUBECONFIG"):
        yield _from_kubeconfig(Path(kubeconfig.split(os.pathsep)[0]))
    elif _docker_available():
        with _k3s(scratch) as plane:
            yield plane
    elif shared := os.environ.get("VK8S_TEST_STATE_DIR"):
        with shared_testbed(StateLayout(Path(shared)), TEST_FLEET) as plane:
            yield plane
    else:
        with private_testbed(StateLayout(scratch / "testbed"), TEST_FLEET) as plane:
            yield plane


@contextlib.contextmanager
def private_testbed(layout: StateLayout, fleet: FleetSpec) -> Iterator[ControlPlane]:
    """A testbed of this process alone, which stops with it even if the process dies first."""
    ready = lifecycle.start_detached(layout, fleet, lifecycle.ensure_binaries(), owner_pid=os.getpid())
    try:
        yield ControlPlane.of_testbed(ready)
    finally:
        lifecycle.stop(layout)


@contextlib.contextmanager
def shared_testbed(layout: StateLayout, fleet: FleetSpec) -> Iterator[ControlPlane]:
    """Reuses the testbed running in `layout` (and leaves it running), else starts one and stops it after.

    For a developer who keeps one testbed up across test runs; parallel sessions need private ones.
    """
    if (ready := _wait_ready(layout)) is not None:
        yield ControlPlane.of_testbed(ready)
        return
    ready = lifecycle.start_detached(layout, fleet, lifecycle.ensure_binaries())
    try:
        yield ControlPlane.of_testbed(ready)
    finally:
        lifecycle.stop(layout)


def _wait_ready(layout: StateLayout) -> ReadyInfo | None:
    """The ready testbed in `layout`, waiting while one is starting there; None if none runs."""
    deadline = time.monotonic() + READY_TIMEOUT
    while lifecycle.supervisor_pid(layout) is not None:
        if (ready := lifecycle.read_ready(layout)) is not None:
            return ready
        if time.monotonic() > deadline:
            raise TimeoutError(f"the testbed in {layout.root} is not ready after {READY_TIMEOUT:.0f}s")
        time.sleep(0.2)
    return None


def _from_kubeconfig(path: Path) -> ControlPlane:
    # A KUBECONFIG that `vk8s testbed up` wrote still gets its exec sandboxes.
    if (ready := lifecycle.ready_for_kubeconfig(path)) is not None:
        return ControlPlane.of_testbed(ready)
    return ControlPlane(path, "kubeconfig")


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@contextlib.contextmanager
def _k3s(scratch: Path) -> Iterator[ControlPlane]:
    # testcontainers is a test extra, needed only where a Docker engine runs.
    from testcontainers.community.k3s import K3SContainer

    with K3SContainer() as k3s:
        path = scratch / "k3s.kubeconfig"
        path.write_text(k3s.config_yaml())
        yield ControlPlane(path, "k3s")


async def new_api_client(kubeconfig: Path) -> client.ApiClient:
    """An ApiClient for `kubeconfig` with the project's CRDs applied (they may be newer than the cluster's)."""
    api = cast(client.ApiClient, await config.new_client_from_config(config_file=str(kubeconfig), persist_config=False))
    try:
        await crds.apply_crds(api, crds.project_crds())
    except BaseException:
        await api.close()
        raise
    return api


@contextlib.asynccontextmanager
async def admin_client(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    """new_api_client for the span of a test (or a session), closed after it."""
    api = await new_api_client(kubeconfig)
    async with api:
        yield api


@contextlib.asynccontextmanager
async def fresh_namespace(api: client.ApiClient, prefix: str = "t-") -> AsyncIterator[str]:
    """A namespace of the caller's own, deleted after it."""
    name = await create_namespace(api, prefix=prefix)
    try:
        yield name
    finally:
        await delete_namespace(api, name)


async def create_namespace(api: client.ApiClient, prefix: str = "t-", timeout: float = 30.0) -> str:
    """A fresh namespace, returned once its default ServiceAccount exists (pods need it)."""
    core = client.CoreV1Api(api)
    namespace = await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(generate_name=prefix)))
    name = name_of(namespace)
    await default_service_account(api, name, timeout)
    return name


async def default_service_account(api: client.ApiClient, namespace: str, timeout: float = 30.0) -> None:
    """Returns once the namespace's default ServiceAccount exists (the controller-manager makes it)."""
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await core.read_namespaced_service_account("default", namespace)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def delete_namespace(api: client.ApiClient, name: str) -> None:
    try:
        await client.CoreV1Api(api).delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise

"""End-to-end tier: the whole product as `vk8s up` runs it (local NATS, the testbed, every
service as its own process), driven through kubectl, the vk8s CLI and the API."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes.aio import client

from libs.kube import GROUP, PLURAL, VERSION
from tests.support import wait
from tests.support.apiserver_faults import ApiserverFaultProxy
from tests.support.cli import cli_env
from vk8s.local import stack
from vk8s.testbed import lifecycle
from vk8s.testbed.config import FleetSpec
from vk8s.testbed.fixtures import admin_client, fresh_namespace
from vk8s.testbed.node_sim.processes import start_time

ROOT = Path(__file__).resolve().parents[2]

# A whole stack answers in seconds, and each probe may run a CLI: poll once a second.
eventually = functools.partial(wait.eventually, interval=1.0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


FLEET = FleetSpec(nodes=4, gpus_per_node=8)


@pytest.fixture(scope="session")
def product_layout(tmp_path_factory: pytest.TempPathFactory) -> stack.StackLayout:
    return stack.StackLayout(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def apiserver_faults(product_layout: stack.StackLayout) -> Iterator[ApiserverFaultProxy]:
    """The proxy the product's services reach the testbed's apiserver through; it passes every
    request through until a test asks it for a fault period."""
    # Owned by this process (it stops if the session dies first); stopped here too, should the
    # stack never come up: its `down` stops it otherwise.
    ready = lifecycle.start_detached(product_layout.testbed, FLEET, lifecycle.ensure_binaries(), owner_pid=os.getpid())
    proxy = ApiserverFaultProxy(ready.server, product_layout.testbed.pki).start()
    try:
        yield proxy
    finally:
        proxy.stop()
        lifecycle.stop(product_layout.testbed)


@pytest.fixture(scope="session")
def product(
    product_layout: stack.StackLayout, apiserver_faults: ApiserverFaultProxy
) -> Iterator[tuple[stack.StackLayout, stack.StackInfo]]:
    layout = product_layout
    ready = lifecycle.read_ready(layout.testbed)
    assert ready is not None
    kubeconfig = apiserver_faults.kubeconfig(Path(ready.kubeconfig), layout.root / "services-kubeconfig")
    info = stack.up(layout, FLEET, service_kubeconfig=str(kubeconfig))
    try:
        yield layout, info
    finally:
        stack.down(layout)
        left = [f"keeper {pid}" for pid in info.service_pids.values() if start_time(pid) is not None]
        left += processes_naming(layout.root)
        assert not left, f"processes of the stack left after its down: {left}"


def processes_naming(root: Path) -> list[str]:
    """Running processes whose command line names a path under `root`: nats-server, the testbed's
    components and every sandbox's processes (inner control planes, exec shims)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") if proc.name.isdigit() else ""
        except OSError:
            continue
        if f"{root}/" in cmdline:
            found.append(f"{proc.name}: {cmdline[:300]}")
    return found


@pytest.fixture(scope="session")
def product_env(product: tuple[stack.StackLayout, stack.StackInfo]) -> dict[str, str]:
    _, info = product
    return cli_env(info)


@pytest.fixture(scope="session")
async def api(product: tuple[stack.StackLayout, stack.StackInfo]) -> AsyncIterator[client.ApiClient]:
    async with admin_client(Path(product[1].kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
async def namespace(api: client.ApiClient) -> AsyncIterator[str]:
    async with fresh_namespace(api, prefix="e2e-") as name:
        yield name


def run(argv: list[str], env: dict[str, str], *, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


async def vk8s_object(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return cast(dict[str, Any], await client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


async def phase_of(api: client.ApiClient, namespace: str, name: str) -> str | None:
    obj = await vk8s_object(api, namespace, name)
    return ((obj or {}).get("status") or {}).get("phase")

"""End-to-end tier: the whole product as `vk8s up` runs it (local NATS, the testbed, every
service as its own process), driven through kubectl, the vk8s CLI and the API."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client

from libs.kube import GROUP, PLURAL, VERSION
from tests.support import wait
from tests.support.cli import cli_env
from vk8s.local import stack
from vk8s.testbed.config import FleetSpec
from vk8s.testbed.fixtures import admin_client, fresh_namespace

ROOT = Path(__file__).resolve().parents[2]

# A whole stack answers in seconds, and each probe may run a CLI: poll once a second.
eventually = functools.partial(wait.eventually, interval=1.0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[stack.StackLayout, stack.StackInfo]]:
    layout = stack.StackLayout(tmp_path_factory.mktemp("stack"))
    info = stack.up(layout, FleetSpec(nodes=4, gpus_per_node=8))
    try:
        yield layout, info
    finally:
        stack.down(layout)


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
        return await client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


async def phase_of(api: client.ApiClient, namespace: str, name: str) -> str | None:
    obj = await vk8s_object(api, namespace, name)
    return ((obj or {}).get("status") or {}).get("phase")

"""The real host tier: kubelets with containerd and runc, started once for this directory's tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes.aio import client

from vk8s.testbed.config import FleetSpec, StateLayout
from vk8s.testbed.fixtures import ControlPlane, create_namespace, delete_namespace, new_api_client, private_testbed
from vk8s.testbed.real import preflight

# Four GPUs a node: two pods of two fill one, a third waits.
REAL_FLEET = FleetSpec(nodes=2, gpus_per_node=4, runtime="real")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def real_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if reason := preflight.problem():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real tier, but this machine cannot: {reason}")
        pytest.skip(f"this machine cannot run the real tier: {reason}")
    with private_testbed(StateLayout(tmp_path_factory.mktemp("real") / "testbed"), REAL_FLEET) as plane:
        yield plane


@pytest.fixture(scope="session")
async def real_api(real_control_plane: ControlPlane) -> AsyncIterator[client.ApiClient]:
    api = await new_api_client(real_control_plane.kubeconfig)
    async with api:
        yield api


@pytest.fixture
async def real_namespace(real_api: client.ApiClient) -> AsyncIterator[str]:
    name = await create_namespace(real_api)
    yield name
    await delete_namespace(real_api, name)

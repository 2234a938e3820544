"""Integration tier: every test here talks to a real kube-apiserver (see vk8s.testbed.fixtures)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes.aio import client

from vk8s.testbed.fixtures import ControlPlane, control_plane, create_namespace, delete_namespace, new_api_client


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kube_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The cluster for this session: $KUBECONFIG, else K3s in Docker, else the local testbed."""
    with control_plane(tmp_path_factory.mktemp("kube")) as plane:
        yield plane


@pytest.fixture(scope="session")
def kube_config_path(kube_control_plane: ControlPlane) -> Path:
    return kube_control_plane.kubeconfig


@pytest.fixture(scope="session")
def sandbox_root(kube_control_plane: ControlPlane) -> Path | None:
    """Where exec into simulated pods runs (<root>/<namespace>/<pod>), None when not the testbed."""
    return kube_control_plane.sandbox_root


@pytest.fixture(scope="session")
async def kube_api(kube_config_path: Path) -> AsyncIterator[client.ApiClient]:
    """A kubernetes.aio ApiClient as cluster admin, with the project's CRDs applied."""
    api = await new_api_client(kube_config_path)
    async with api:
        yield api


@pytest.fixture
async def namespace(kube_api: client.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace for one test, deleted after it."""
    name = await create_namespace(kube_api)
    yield name
    await delete_namespace(kube_api, name)

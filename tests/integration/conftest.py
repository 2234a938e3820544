"""Integration tier: every test here talks to a real kube-apiserver (see vk8s.testbed.fixtures)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes.aio import client

from tests.support.apiserver_faults import ApiserverFaultProxy
from tests.support.real_tier import require_real_tier
from vk8s.testbed.config import FleetSpec, StateLayout
from vk8s.testbed.fixtures import (
    ControlPlane,
    admin_client,
    control_plane,
    fresh_namespace,
    private_testbed,
)

# Four GPUs a node: two pods of two fill one, a third waits.
REAL_FLEET = FleetSpec(nodes=2, gpus_per_node=4, runtime="real")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`tier` runs a test on the kwok testbed and on the real host tier."""
    if "tier" in metafunc.fixturenames:
        metafunc.parametrize("tier", ["kwok", pytest.param("real", marks=pytest.mark.real)], indirect=True)


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
    async with admin_client(kube_config_path) as api:
        yield api


@pytest.fixture
async def faulty_api(
    kube_control_plane: ControlPlane, tmp_path: Path
) -> AsyncIterator[tuple[ApiserverFaultProxy, client.ApiClient]]:
    """An admin API client whose requests go through a fault-injecting proxy (the testbed only:
    the proxy serves with its PKI), and the proxy, to start a fault period."""
    if kube_control_plane.source != "testbed":
        pytest.skip("the fault proxy serves with the testbed's PKI")
    kubeconfig = kube_control_plane.kubeconfig
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    proxy = ApiserverFaultProxy(server, StateLayout(kubeconfig.parent).pki).start()
    try:
        async with admin_client(proxy.kubeconfig(kubeconfig, tmp_path / "faulty-kubeconfig")) as api:
            yield proxy, api
    finally:
        proxy.stop()


@pytest.fixture
async def namespace(kube_api: client.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace for one test, deleted after it."""
    async with fresh_namespace(kube_api) as name:
        yield name


@pytest.fixture(scope="session")
def real_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real host tier (kubelets, containerd, runc) of this session's own."""
    require_real_tier()
    with private_testbed(StateLayout(tmp_path_factory.mktemp("real") / "testbed"), REAL_FLEET) as plane:
        yield plane


@pytest.fixture(scope="session")
async def real_api(real_control_plane: ControlPlane) -> AsyncIterator[client.ApiClient]:
    async with admin_client(real_control_plane.kubeconfig) as api:
        yield api


@pytest.fixture
async def real_namespace(real_api: client.ApiClient) -> AsyncIterator[str]:
    async with fresh_namespace(real_api) as name:
        yield name


@pytest.fixture
def tier(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tier_api(tier: str, request: pytest.FixtureRequest) -> client.ApiClient:
    """The admin client of the tier under test."""
    api: client.ApiClient = request.getfixturevalue("kube_api" if tier == "kwok" else "real_api")
    return api


@pytest.fixture
async def tier_namespace(tier_api: client.ApiClient) -> AsyncIterator[str]:
    async with fresh_namespace(tier_api) as name:
        yield name

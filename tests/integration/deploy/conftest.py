"""The chart installed into the test cluster: once cluster-wide (the default) and once scoped to a tenant
namespace, each with a NATS credentials Secret as an operator would create it. Helm is the testbed build's."""

from __future__ import annotations

import base64
import socket
import subprocess
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio import client

from services.topology import NAMES
from tests.unit.deploy.helm import CHART_DIR, helm_binary, set_args
from vk8s.testbed.fixtures import create_namespace, delete_namespace

NATS_SECRET = "vk8s-nats"
# Each service's password (nats.auth.type serviceUsers, the default), and a shared user's.
NATS_SECRET_DATA = {**{f"{service}-password": f"{service}-{uuid.uuid4().hex}" for service in NAMES}, "user": "vk8s", "password": "shared"}


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    # Namespaces virtual clusters may live in: listed ones get the tenant RoleBindings; `outsider` is not listed.
    tenants: tuple[str, ...]
    outsider: str
    values: dict[str, Any] = field(default_factory=dict)

    def service_account(self, service: str) -> str:
        return f"{self.name}-vk8s-{service}"

    @property
    def role_prefix(self) -> str:
        """Of the chart's ClusterRoles: `<namespace>-<fullname>-` (a service's: <prefix><service>-<scope>)."""
        return f"{self.namespace}-{self.name}-vk8s-"


def run_helm(kubeconfig: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm_binary()), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{result.stdout}\n{result.stderr}"
    return result


async def create_nats_secret(api: client.ApiClient, namespace: str) -> None:
    await client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": NATS_SECRET},
            "data": {
                key: base64.b64encode(value.encode()).decode()
                for key, value in NATS_SECRET_DATA.items()
            },
        },
    )


@pytest.fixture(scope="session")
def helm_path() -> Path:
    return helm_binary()


def apiserver_address(kubeconfig: Path) -> str:
    """The IP address of the kubeconfig's (current context's) apiserver."""
    document = yaml.safe_load(kubeconfig.read_text())
    context = next(c["context"] for c in document["contexts"] if c["name"] == document["current-context"])
    server = next(c["cluster"]["server"] for c in document["clusters"] if c["name"] == context["cluster"])
    return socket.gethostbyname(str(urllib.parse.urlsplit(server).hostname))


async def _install(api: client.ApiClient, kubeconfig: Path, *, name: str, scoped: bool) -> AsyncIterator[Release]:
    namespaces = [await create_namespace(api, prefix=prefix) for prefix in ("vk8s-sys-", "vk8s-tenant-", "vk8s-other-")]
    release_ns, tenant, outsider = namespaces
    # The tenant ClusterRole is cluster-scoped: each release of the session names its own.
    tenant_role = {"create": True, "name": f"{release_ns}-tenant"}
    rbac = {"tenantNamespaces": [tenant] if scoped else [], "tenantRole": tenant_role}
    # The testbed's apiserver publishes no `kubernetes` Endpoints (loopback only) for the chart to look up.
    kube_api_peers = [{"ipBlock": {"cidr": f"{apiserver_address(kubeconfig)}/32"}}]
    values: dict[str, Any] = {"rbac": rbac, "networkPolicy": {"egress": {"kubeApi": {"to": kube_api_peers}}}}
    release = Release(name, release_ns, (tenant,), outsider, values)
    try:
        await create_nats_secret(api, release_ns)
        run_helm(
            kubeconfig, "install", name, str(CHART_DIR), "--namespace", release_ns, "--wait", "--timeout", "3m",
            *set_args(values),
        )  # fmt: skip
        yield release
        run_helm(kubeconfig, "uninstall", name, "--namespace", release_ns, "--wait")
    finally:
        for namespace in namespaces:
            await delete_namespace(api, namespace)


@pytest.fixture(scope="session")
async def release(kube_api: client.ApiClient, kube_config_path: Path) -> AsyncIterator[Release]:
    """The chart with its defaults: tenant grants bound cluster-wide."""
    async for installed in _install(kube_api, kube_config_path, name="wide", scoped=False):
        yield installed


@pytest.fixture(scope="session")
async def scoped_release(kube_api: client.ApiClient, kube_config_path: Path) -> AsyncIterator[Release]:
    """The chart with rbac.tenantNamespaces = [one namespace]."""
    async for installed in _install(kube_api, kube_config_path, name="scoped", scoped=True):
        yield installed


async def service_account_kubeconfig(
    api: client.ApiClient, admin_kubeconfig: Path, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig authenticating with a fresh token of the service account (TokenRequest): what the pod
    would present, so the apiserver authenticates and authorizes it exactly as in the cluster."""
    token = await client.CoreV1Api(api).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c["context"] for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token.status.token}}],
        "contexts": [
            {"name": account, "context": {"cluster": cluster["name"], "user": account, "namespace": namespace}}
        ],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path

"""Every manifest the chart renders, in each configuration, passes the apiserver's own validation
(`kubectl apply --dry-run=server`, strict field validation). Istio's and the Prometheus Operator's kinds
are checked against their real CRDs (crds/, copied from the upstream releases named in the file names),
installed for this module only where the cluster does not have them already."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.unit.deploy.helm import template
from vk8s.testbed import crds
from vk8s.testbed.fixtures import create_namespace, delete_namespace

THIRD_PARTY_CRDS = Path(__file__).parent / "crds"

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "mesh-and-operator": {
        "mesh": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    },
    "mesh-mtls-scrapers-podmonitor": {
        "mesh": {
            "enabled": True,
            "permissiveOperatorPort": False,
            "metricsPrincipals": ["cluster.local/ns/monitoring/sa/prometheus"],
        },
        "metrics": {"podMonitor": {"enabled": True}},
        "nats": {"auth": {"type": "creds"}},
        "podAntiAffinity": "hard",
    },
    "tenants": {"tenants": True},
}


@pytest.fixture(scope="module")
async def third_party_crds(kube_api: client.ApiClient) -> AsyncIterator[None]:
    documents = [
        d for path in sorted(THIRD_PARTY_CRDS.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d
    ]
    extensions = client.ApiextensionsV1Api(kube_api)
    missing = []
    for document in documents:
        try:
            await extensions.read_custom_resource_definition(document["metadata"]["name"])
        except ApiException as error:
            if error.status != 404:
                raise
            missing.append(document)
    # A cluster that has Istio or the operator keeps its own CRDs: only absent ones are added, and removed after.
    await crds.apply_crds(kube_api, missing)
    yield
    for document in missing:
        await extensions.delete_custom_resource_definition(document["metadata"]["name"])


@pytest.fixture
async def namespaces(kube_api: client.ApiClient) -> AsyncIterator[list[str]]:
    created = [
        await create_namespace(kube_api, prefix=prefix)
        for prefix in ("vk8s-dry-", "vk8s-dry-tenant-", "vk8s-dry-tenant-")
    ]
    yield created
    for name in created:
        await delete_namespace(kube_api, name)


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
@pytest.mark.usefixtures("third_party_crds")
def test_rendered_manifests_pass_server_side_validation(
    configuration: str, namespaces: list[str], kube_config_path: Path
) -> None:
    release_ns, *tenants = namespaces
    values = dict(CONFIGURATIONS[configuration])
    if values.pop("tenants", False):
        values["rbac"] = {"tenantNamespaces": tenants}
    rendered = template(values, namespace=release_ns, release="dry")
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted({d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d})
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kube_config_path), "apply", "--dry-run=server", "--validate=strict", "-f", "-"],
        input=rendered.stdout,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert result.returncode == 0, f"{configuration} ({', '.join(kinds)}):\n{result.stderr}"
    assert "(server dry run)" in result.stdout

"""`helm install --wait` of the chart into the test cluster succeeds, and what it made is what was promised.
(On the testbed kwok plays the kubelet, so pods go Ready without the image being pulled.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from kubernetes.aio import client

from services.topology import NAMES as SERVICES
from tests.integration.deploy.conftest import Release, run_helm
from tests.unit.deploy.helm import CHART_DIR, helm_binary
from vk8s.testbed.fixtures import create_namespace, delete_namespace


async def test_release_is_deployed_with_every_service_available(
    release: Release, kube_api: client.ApiClient, kube_config_path: Path
) -> None:
    status = json.loads(
        run_helm(kube_config_path, "status", release.name, "--namespace", release.namespace, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    apps = client.AppsV1Api(kube_api)
    deployments = {
        d.metadata.labels["app.kubernetes.io/component"]: d
        for d in (
            await apps.list_namespaced_deployment(
                release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}"
            )
        ).items
    }
    assert sorted(deployments) == sorted(SERVICES)
    for name, deployment in deployments.items():
        assert deployment.status.available_replicas == deployment.spec.replicas == 2, name


async def test_replicas_land_on_different_nodes(release: Release, kube_api: client.ApiClient) -> None:
    pods = (
        await client.CoreV1Api(kube_api).list_namespaced_pod(
            release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}"
        )
    ).items
    nodes = await client.CoreV1Api(kube_api).list_node()
    if len(nodes.items) < 2:
        return  # one node: soft anti-affinity lets both replicas share it, which is the point of "soft"
    by_service: dict[str, set[str]] = {}
    for pod in pods:
        by_service.setdefault(pod.metadata.labels["app.kubernetes.io/component"], set()).add(pod.spec.node_name)
    assert all(len(hosts) == 2 for hosts in by_service.values()), by_service


async def test_disruption_budgets_allow_one_pod_down(release: Release, kube_api: client.ApiClient) -> None:
    budgets = (await client.PolicyV1Api(kube_api).list_namespaced_pod_disruption_budget(release.namespace)).items
    assert len(budgets) == len(SERVICES)
    for budget in budgets:
        assert budget.status.expected_pods == 2
        assert budget.status.disruptions_allowed == 1, budget.metadata.name


async def test_the_crd_is_served(release: Release, kube_api: client.ApiClient) -> None:
    crd = await client.ApiextensionsV1Api(kube_api).read_custom_resource_definition("vk8s.vk8s.skt.co.kr")
    assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)


async def test_upgrade_changes_replicas_in_place(
    release: Release, kube_api: client.ApiClient, kube_config_path: Path
) -> None:
    run_helm(
        kube_config_path, "upgrade", release.name, str(CHART_DIR),
        "--namespace", release.namespace, "--reuse-values", "--set", "services.projector.replicas=3", "--wait", "--timeout", "3m",
    )  # fmt: skip
    try:
        projector = await client.AppsV1Api(kube_api).read_namespaced_deployment(
            f"{release.name}-vk8s-projector", release.namespace
        )
        assert projector.status.available_replicas == 3
    finally:
        run_helm(
            kube_config_path,
            "rollback",
            release.name,
            "1",
            "--namespace",
            release.namespace,
            "--wait",
            "--timeout",
            "3m",
        )


async def test_apiserver_egress_is_the_apiservers_addresses_looked_up_at_install(
    kube_api: client.ApiClient, kube_config_path: Path
) -> None:
    """A server-side dry run of an install does the chart's lookups: with no `kubernetes` Endpoints (the
    testbed's apiserver publishes none) it is refused, naming the value to set; with them, the services
    may reach exactly their addresses. The Endpoints are this test's, made and removed by it."""
    core = client.CoreV1Api(kube_api)
    namespace = await create_namespace(kube_api, prefix="vk8s-lookup-")

    def dry_run() -> subprocess.CompletedProcess[str]:
        args = ["install", "lookup", str(CHART_DIR), "--namespace", namespace, "--dry-run=server", "-o", "json"]
        return subprocess.run(
            [str(helm_binary()), "--kubeconfig", str(kube_config_path), *args], capture_output=True, text=True, timeout=300
        )

    try:
        refused = dry_run()
        assert refused.returncode != 0
        assert "networkPolicy.egress.kubeApi.to is empty and the apiserver's addresses could not be looked up" in refused.stderr
        endpoints = {"metadata": {"name": "kubernetes"}, "subsets": [
            {"addresses": [{"ip": "192.0.2.10"}, {"ip": "192.0.2.11"}], "ports": [{"name": "https", "port": 6443}]}
        ]}  # fmt: skip
        await core.create_namespaced_endpoints("default", endpoints)
        try:
            looked_up = dry_run()
        finally:
            await core.delete_namespaced_endpoints("kubernetes", "default")
        assert looked_up.returncode == 0, looked_up.stderr
        manifests = [m for m in yaml.safe_load_all(json.loads(looked_up.stdout)["manifest"]) if m]
        [policy] = [m for m in manifests if m["kind"] == "NetworkPolicy" and m["metadata"]["name"] == "lookup-vk8s-services"]
        [rule] = [r for r in policy["spec"]["egress"] if {"port": 6443, "protocol": "TCP"} in r["ports"]]
        assert rule["to"] == [{"ipBlock": {"cidr": "192.0.2.10/32"}}, {"ipBlock": {"cidr": "192.0.2.11/32"}}]
    finally:
        await delete_namespace(kube_api, namespace)

"""The chart's `vk8s-tenant` ClusterRole on the testbed's apiserver (RBAC authorization): a tenant bound
to it in its namespace (impersonated) manages its Vk8s objects and reads the kubeconfig copy the
pipeline writes there, and is refused exec, Secret reads and StatefulSet patches on the vNode objects
in the cluster's platform namespace. Each refusal is checked against the admin doing the same, so the
check can fail."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from libs.kube import GROUP, KIND, PLURAL, VERSION
from libs.kube.vnodes import cluster_labels
from services.bootstrap.adapters.host import HostCluster
from tests.support.events import spec_document
from tests.support.platform import make_platform_namespace
from tests.unit.deploy.helm import template
from vk8s.testbed.fixtures import delete_namespace, new_api_client

KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n"


@pytest.fixture
async def tenant_role(kube_api: client.ApiClient) -> AsyncIterator[str]:
    """The chart's ClusterRole, under a name of this test's own (it is cluster-scoped)."""
    name = f"vk8s-tenant-{uuid.uuid4().hex[:8]}"
    values = {"rbac": {"tenantRole": {"create": True, "name": name}}}
    rendered = template(values, extra=["--show-only", "templates/tenant-role.yaml"])
    assert rendered.returncode == 0, rendered.stderr
    rbac = client.RbacAuthorizationV1Api(kube_api)
    await rbac.create_cluster_role(yaml.safe_load(rendered.stdout))
    yield name
    await rbac.delete_cluster_role(name)


@pytest.fixture
async def as_tenant(
    kube_api: client.ApiClient, kube_config_path: Path, namespace: str, tenant_role: str
) -> AsyncIterator[client.ApiClient]:
    """A client impersonating a user bound to the tenant role in `namespace` only."""
    user = f"tenant-{uuid.uuid4().hex[:8]}"
    binding = {
        "metadata": {"name": "tenant"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": tenant_role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    await client.RbacAuthorizationV1Api(kube_api).create_namespaced_role_binding(namespace, binding)
    api = await new_api_client(kube_config_path)
    api.set_default_header("Impersonate-User", user)
    async with api:
        yield api


@pytest.fixture
async def vnode_objects(kube_api: client.ApiClient, namespace: str) -> AsyncIterator[dict[str, Any]]:
    """A Vk8s, its platform namespace with a vNode StatefulSet and pod, and the kubeconfig Secrets as
    bootstrap writes them (the platform's, and the tenant's copy)."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": "c"}, "spec": spec_document()}
    custom = client.CustomObjectsApi(kube_api)
    vk8s = cast(dict[str, Any], await custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))
    platform = await make_platform_namespace(kube_api, vk8s)
    labels = {**cluster_labels(namespace, "c", vk8s["metadata"]["uid"]), "vnode": "master"}
    statefulset = {
        "metadata": {"name": "c-master", "labels": labels},
        "spec": {
            "replicas": 0,
            "serviceName": "c-vnodes",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "vnode", "image": "registry.invalid/kink:1"}]}},
        },
    }  # fmt: skip
    await client.AppsV1Api(kube_api).create_namespaced_stateful_set(platform, statefulset)
    pod = {
        "metadata": {"name": "c-master-0", "labels": labels},
        "spec": {"nodeName": "no-such-node", "containers": [{"name": "vnode", "image": "registry.invalid/kink:1"}]},
    }
    await client.CoreV1Api(kube_api).create_namespaced_pod(platform, pod)
    await HostCluster(kube_api).store_kubeconfig(vk8s, platform, "c-kubeconfig", KUBECONFIG)
    yield {"vk8s": vk8s, "platform": platform}
    await delete_namespace(kube_api, platform)


async def exec_status(api: client.ApiClient, namespace: str, pod: str) -> int:
    """The status of an exec request (a POST, authorized as `create` on pods/exec); a plain request
    without an upgrade, so an authorized one fails after authorization (400), a refused one with 403."""
    try:
        await client.CoreV1Api(api).connect_post_namespaced_pod_exec(pod, namespace, command=["id"], stdout=True)
    except ApiException as error:
        return int(error.status)
    return 200


async def test_a_tenant_manages_its_vk8s_objects_in_its_namespace_only(
    as_tenant: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(as_tenant)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": "mine"}, "spec": spec_document()}

    created = cast(dict[str, Any], await custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))
    read = cast(dict[str, Any], await custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "mine"))
    assert read["metadata"]["uid"] == created["metadata"]["uid"]
    await custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "mine")
    with pytest.raises(ApiException) as elsewhere:
        await custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    assert elsewhere.value.status == 403, "bound in its namespace only"


async def test_a_tenant_reads_the_kubeconfig_copy_and_nothing_of_the_vnodes(
    as_tenant: client.ApiClient, kube_api: client.ApiClient, namespace: str, vnode_objects: dict[str, Any]
) -> None:
    platform = vnode_objects["platform"]
    copy = await client.CoreV1Api(as_tenant).read_namespaced_secret("c-kubeconfig", namespace)
    assert copy.data["kubeconfig"]
    image = {"spec": {"template": {"spec": {"containers": [{"name": "vnode", "image": "evil.example.com/root:1"}]}}}}

    def attempts(api: client.ApiClient) -> dict[str, Callable[[], Awaitable[Any]]]:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        return {
            "read the platform's kubeconfig Secret": lambda: core.read_namespaced_secret("c-kubeconfig", platform),
            "patch the vNode StatefulSet": lambda: apps.patch_namespaced_stateful_set(
                "c-master", platform, image, dry_run="All"
            ),
            "read the vNode pod": lambda: core.read_namespaced_pod("c-master-0", platform),
        }

    # The admin may (so the checks below can fail); the tenant may not.
    admin_exec = await exec_status(kube_api, platform, "c-master-0")
    assert admin_exec != 403, admin_exec
    for attempt in attempts(kube_api).values():
        await attempt()
    assert await exec_status(as_tenant, platform, "c-master-0") == 403, "exec into the vNode"
    for what, attempt in attempts(as_tenant).items():
        with pytest.raises(ApiException) as refused:
            await attempt()
        assert refused.value.status == 403, what

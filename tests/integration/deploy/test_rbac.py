"""The installed chart's RBAC, asked by each service account itself (a TokenRequest token, then
SelfSubjectAccessReviews): everything its code does is allowed, every neighbouring right is refused; with
rbac.tenantNamespaces the tenant rights stop at the listed namespaces. A few real requests confirm that
the reviews and the apiserver agree."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

from services.topology import NAMES as SERVICES
from tests.integration.deploy.conftest import Release, service_account_kubeconfig
from tests.unit.deploy.rbac_expectations import NEEDED, REFUSED, Access


@asynccontextmanager
async def as_service(
    kube_api: client.ApiClient, kube_config_path: Path, release: Release, service: str, scratch: Path
) -> AsyncIterator[client.ApiClient]:
    path = await service_account_kubeconfig(
        kube_api,
        kube_config_path,
        release.namespace,
        release.service_account(service),
        scratch / f"{release.name}-{service}.kubeconfig",
    )
    api = await config.new_client_from_config(config_file=str(path), persist_config=False)
    async with api:
        yield api


async def allowed(api: client.ApiClient, access: Access, namespace: str | None) -> tuple[bool, str]:
    resource, _, subresource = access.resource.partition("/")
    attributes: dict[str, str | None] = {"verb": access.verb, "group": access.group, "resource": resource}
    if subresource:
        attributes["subresource"] = subresource
    if access.scope == "tenant":
        attributes["namespace"] = namespace
    review = await client.AuthorizationV1Api(api).create_self_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
    )
    return bool(review.status.allowed), review.status.reason or review.status.evaluation_error or ""


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_may_do_what_it_does_and_nothing_next_to_it(
    service: str, release: Release, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    async with as_service(kube_api, kube_config_path, release, service, tmp_path) as api:
        (tenant,) = release.tenants
        for namespace in (tenant, release.outsider):  # cluster-wide: any namespace will do
            for access in NEEDED[service]:
                ok, reason = await allowed(api, access, namespace)
                assert ok, f"{service} may not {access} ({namespace}): {reason}"
        for access in REFUSED[service]:
            ok, reason = await allowed(api, access, tenant)
            assert not ok, f"{service} may {access}: {reason}"


@pytest.mark.parametrize("service", SERVICES)
async def test_tenant_rights_stop_at_the_listed_namespaces(
    service: str, scoped_release: Release, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    async with as_service(kube_api, kube_config_path, scoped_release, service, tmp_path) as api:
        (tenant,) = scoped_release.tenants
        for access in NEEDED[service]:
            ok, reason = await allowed(api, access, tenant)
            assert ok, f"{service} may not {access} ({tenant}): {reason}"
            if access.scope == "tenant":
                ok, reason = await allowed(api, access, scoped_release.outsider)
                assert not ok, f"{service} may {access} in {scoped_release.outsider}, which is not a tenant namespace"


async def test_reviews_match_real_requests(
    release: Release, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    (tenant,) = release.tenants
    async with as_service(kube_api, kube_config_path, release, "scheduler", tmp_path) as api:
        nodes = await client.CoreV1Api(api).list_node()
        assert nodes.items
        with pytest.raises(ApiException) as refused:
            await client.CoreV1Api(api).list_namespaced_secret(tenant)
        assert refused.value.status == 403
    async with as_service(kube_api, kube_config_path, release, "vnode", tmp_path) as api:
        # The vnode stage's own write: a server-side apply that creates the object.
        body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rbac-probe", "namespace": tenant},
                "spec": {"ports": [{"port": 6443}], "selector": {"app": "vk8s"}}}  # fmt: skip
        await client.CoreV1Api(api).patch_namespaced_service(
            "rbac-probe",
            tenant,
            body,
            field_manager="vk8s-vnode",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        await client.CoreV1Api(api).delete_namespaced_service("rbac-probe", tenant)
        with pytest.raises(ApiException) as refused:
            await client.CoreV1Api(api).read_namespaced_secret("anything", tenant)
        assert refused.value.status == 403


async def test_only_the_charts_own_roles_are_bound(release: Release, kube_api: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(kube_api)
    accounts = {release.service_account(service) for service in SERVICES}
    bindings: list[client.V1ClusterRoleBinding | client.V1RoleBinding] = [
        *(await rbac.list_cluster_role_binding()).items,
        *(await rbac.list_role_binding_for_all_namespaces()).items,
    ]
    ours = [
        b for b in bindings
        if any(s.kind == "ServiceAccount" and s.namespace == release.namespace and s.name in accounts for s in b.subjects or [])
    ]  # fmt: skip
    assert ours
    for binding in ours:
        assert binding.role_ref.kind == "ClusterRole"
        assert binding.role_ref.name.startswith(f"{release.namespace}-{release.name}-vk8s-"), binding.role_ref.name

"""The installed chart's RBAC, asked by each service account itself (a TokenRequest token, then
SelfSubjectAccessReviews): everything its code does is allowed, every neighbouring right is refused; the
tenant rights hold only in a tenant namespace the gateway served (by default) or in the listed ones (with
rbac.tenantNamespaces); the platform rights hold only in a platform namespace the gateway made. The gateway
acts as its own service account, with the bindings the chart tells it. A few real requests confirm that the
reviews and the apiserver agree."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

from libs.kube import GROUP, KIND, PLURAL, VERSION
from services.gateway.adapters.kubernetes import ClusterObjects
from services.gateway.settings import GatewaySettings
from services.topology import NAMES as SERVICES
from tests.integration.deploy.conftest import Release, service_account_kubeconfig
from tests.support.events import spec_document
from tests.support.wait import eventually
from tests.unit.deploy.rbac_expectations import (
    NEEDED,
    PLATFORM_SERVICES,
    REFUSED,
    TENANT_ROLE_BINDS,
    Access,
    also_for_tenants,
)
from vk8s.testbed.fixtures import create_namespace, delete_namespace


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


async def allowed(
    api: client.ApiClient, access: Access, namespace: str | None, release: Release
) -> tuple[bool, str]:
    resource, _, subresource = access.resource.partition("/")
    attributes: dict[str, str | None] = {"verb": access.verb, "group": access.group, "resource": resource}
    if subresource:
        attributes["subresource"] = subresource
    if access.name:
        attributes["name"] = access.name.format(prefix=release.role_prefix)
    if access.scope != "cluster":
        attributes["namespace"] = namespace
    review = await client.AuthorizationV1Api(api).create_self_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
    )
    return bool(review.status.allowed), review.status.reason or review.status.evaluation_error or ""


async def gateway_settings(kube_api: client.ApiClient, release: Release) -> GatewaySettings:
    """The settings the chart gives the release's gateway (its Deployment's environment)."""
    deployment = await client.AppsV1Api(kube_api).read_namespaced_deployment(
        release.service_account("gateway"), release.namespace
    )
    env = deployment.spec.template.spec.containers[0].env
    return GatewaySettings.model_validate(
        {e.name.removeprefix("VK8S_GATEWAY_").lower(): json.loads(e.value) for e in env if e.name.endswith(JSON_SETTINGS)}
    )


JSON_SETTINGS = ("_BINDINGS", "_RESERVED_NAMESPACES")


async def gateway_objects(kube_api: client.ApiClient, release: Release, api: client.ApiClient) -> ClusterObjects:
    settings = await gateway_settings(kube_api, release)
    return ClusterObjects(
        api,
        platform_bindings=settings.platform_bindings,
        tenant_bindings=settings.tenant_bindings,
        reserved_namespaces=settings.reserved_namespaces,
    )


@pytest.fixture
async def served_tenant(release: Release, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path) -> str:
    """The release's tenant namespace as its gateway prepares it when it first serves a Vk8s there."""
    (tenant,) = release.tenants
    async with as_service(kube_api, kube_config_path, release, "gateway", tmp_path) as api:
        assert await (await gateway_objects(kube_api, release, api)).prepare_tenant_namespace(tenant) is None
    return tenant


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_may_do_what_it_does_and_nothing_next_to_it(
    service: str, release: Release, served_tenant: str, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    """By default (rbac.tenantNamespaces empty) the tenant rights hold in a namespace the gateway served and in
    no other: not in one it never served, nor in kube-system."""
    async with as_service(kube_api, kube_config_path, release, service, tmp_path) as api:
        for namespace in (served_tenant, release.outsider, "kube-system"):
            for access in NEEDED[service]:
                ok, reason = await allowed(api, access, namespace, release)
                if access.scope == "cluster" or (
                    namespace == served_tenant and (access.scope == "tenant" or also_for_tenants(service, access))
                ):
                    assert ok, f"{service} may not {access} ({namespace}): {reason}"
                else:
                    assert not ok, f"{service} may {access} in {namespace}: {reason}"
        for access in REFUSED[service]:
            ok, reason = await allowed(api, access, served_tenant, release)
            assert not ok, f"{service} may {access}: {reason}"


@pytest.mark.parametrize("service", SERVICES)
async def test_tenant_rights_stop_at_the_listed_namespaces(
    service: str, scoped_release: Release, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    async with as_service(kube_api, kube_config_path, scoped_release, service, tmp_path) as api:
        (tenant,) = scoped_release.tenants
        for access in NEEDED[service]:
            ok, reason = await allowed(api, access, tenant, scoped_release)
            # The chart binds the tenant roles in the listed namespaces: the gateway binds none.
            expected = (access.scope != "platform" or also_for_tenants(service, access)) and access not in TENANT_ROLE_BINDS
            assert ok == expected, f"{service}: {access} ({tenant}): {ok} {reason}"
            if access.scope != "cluster":
                ok, reason = await allowed(api, access, scoped_release.outsider, scoped_release)
                assert not ok, f"{service} may {access} in {scoped_release.outsider}, which is not a tenant namespace"


@pytest.fixture
async def platform_namespace(
    release: Release, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> AsyncIterator[str]:
    """A cluster's platform namespace as the release's gateway makes it, as its own service account."""
    (tenant,) = release.tenants
    name = f"c-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec_document()}
    vk8s = await client.CustomObjectsApi(kube_api).create_namespaced_custom_object(GROUP, VERSION, tenant, PLURAL, body)
    async with as_service(kube_api, kube_config_path, release, "gateway", tmp_path) as api:
        made = await (await gateway_objects(kube_api, release, api)).ensure_platform_namespace(vk8s)
    assert made is not None
    try:
        yield made
    finally:
        await delete_namespace(kube_api, made)
        await client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(GROUP, VERSION, tenant, PLURAL, name)


@pytest.mark.parametrize("service", PLATFORM_SERVICES)
async def test_platform_rights_hold_in_a_platform_namespace_the_gateway_made_and_nowhere_else(
    service: str,
    release: Release,
    platform_namespace: str,
    kube_api: client.ApiClient,
    kube_config_path: Path,
    tmp_path: Path,
) -> None:
    platform = [access for access in NEEDED[service] if access.scope == "platform"]
    assert platform
    async with as_service(kube_api, kube_config_path, release, service, tmp_path) as api:
        for access in platform:
            ok, reason = await allowed(api, access, platform_namespace, release)
            assert ok, f"{service} may not {access} ({platform_namespace}): {reason}"
            # (one it also has in tenant namespaces holds in the ones the gateway served)
            tenants = () if also_for_tenants(service, access) else release.tenants
            for elsewhere in (*tenants, release.outsider, "kube-system"):
                ok, reason = await allowed(api, access, elsewhere, release)
                assert not ok, f"{service} may {access} in {elsewhere}: {reason}"


def probe_binding(role: str, subject_namespace: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"probe-{uuid.uuid4().hex[:8]}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": subject_namespace}],
    }


async def test_the_gateway_binds_only_the_platform_roles(
    release: Release, platform_namespace: str, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    """Real requests (dry runs): a binding of a platform role in a platform namespace is made; one of
    another role is refused (the RBAC escalation check) unless the gateway holds every right of that role
    itself (RBAC allows that; nothing beyond its own rights)."""
    (tenant,) = release.tenants
    [binding, *_] = (await gateway_settings(kube_api, release)).platform_bindings
    async with as_service(kube_api, kube_config_path, release, "gateway", tmp_path) as api:
        rbac = client.RbacAuthorizationV1Api(api)
        await rbac.create_namespaced_role_binding(platform_namespace, probe_binding(binding.role, tenant), dry_run="All")
        others = ("cluster-admin", "admin", f"{release.role_prefix}scheduler-cluster", "view")
        for role in others:
            with pytest.raises(ApiException) as refused:
                await rbac.create_namespaced_role_binding(platform_namespace, probe_binding(role, tenant), dry_run="All")
            assert refused.value.status == 403, role


async def test_the_admission_policy_holds_the_gateway_to_platform_namespaces(
    release: Release, platform_namespace: str, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    """What RBAC cannot: the gateway deleting a namespace, or binding a platform role, outside platform
    namespaces is denied (the chart's ValidatingAdmissionPolicy); in a platform namespace both go through."""
    (tenant,) = release.tenants
    [binding, *_] = (await gateway_settings(kube_api, release)).platform_bindings
    other = await create_namespace(kube_api, prefix="vk8s-not-platform-")
    try:
        async with as_service(kube_api, kube_config_path, release, "gateway", tmp_path) as api:
            core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
            refusals = {
                "delete another namespace": lambda: core.delete_namespace(other, dry_run="All"),
                "bind a platform role in a tenant namespace": lambda: rbac.create_namespaced_role_binding(
                    tenant, probe_binding(binding.role, tenant), dry_run="All"
                ),
            }
            for what, attempt in refusals.items():
                error = await eventually(functools.partial(denied, attempt), f"the gateway refused to {what}")
                assert error.status == 403, what
                assert "platform namespaces only" in str(error.body), what
            await core.delete_namespace(platform_namespace, dry_run="All")
    finally:
        await delete_namespace(kube_api, other)


async def denied(attempt: Callable[[], Awaitable[Any]]) -> ApiException | None:
    try:
        await attempt()
    except ApiException as error:
        return error
    return None  # the policy is not in force yet (it is compiled after the install)


async def test_the_gateway_binds_the_tenant_roles_in_tenant_namespaces_only(
    release: Release, platform_namespace: str, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    """Hostile input (a Vk8s, or a request, naming the host's own namespaces or a cluster's platform namespace):
    the gateway binds nothing there; asked directly, the chart's admission policy refuses it too."""
    settings = await gateway_settings(kube_api, release)
    [tenant_binding, *_] = settings.tenant_bindings
    assert release.namespace in settings.reserved_namespaces and "kube-system" in settings.reserved_namespaces
    forbidden = ("kube-system", release.namespace, platform_namespace)
    async with as_service(kube_api, kube_config_path, release, "gateway", tmp_path) as api:
        objects = await gateway_objects(kube_api, release, api)
        for namespace in forbidden:
            problem = await objects.prepare_tenant_namespace(namespace)
            assert problem is not None and f"namespace {namespace!r} is" in problem, problem
            bindings = await client.RbacAuthorizationV1Api(kube_api).list_namespaced_role_binding(namespace)
            assert not [b for b in bindings.items if b.role_ref.name.endswith("-tenant")], namespace
        rbac = client.RbacAuthorizationV1Api(api)
        for namespace in forbidden:
            attempt = functools.partial(
                rbac.create_namespaced_role_binding, namespace, probe_binding(tenant_binding.role, namespace), dry_run="All"
            )
            error = await eventually(functools.partial(denied, attempt), f"the gateway refused to bind in {namespace}")
            assert error.status == 403, namespace
            assert "tenant namespaces only" in str(error.body), namespace
        await rbac.create_namespaced_role_binding(
            release.outsider, probe_binding(tenant_binding.role, release.outsider), dry_run="All"
        )


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


async def test_tenant_reviews_match_real_requests(
    release: Release, served_tenant: str, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    """kubeflow reads the user's password Secret in a namespace the gateway served, in no other."""
    async with as_service(kube_api, kube_config_path, release, "kubeflow", tmp_path) as api:
        for namespace, expected in ((served_tenant, 404), (release.outsider, 403), ("kube-system", 403)):
            with pytest.raises(ApiException) as answered:
                await client.CoreV1Api(api).read_namespaced_secret("not-there", namespace)
            assert answered.value.status == expected, namespace

async def test_platform_reviews_match_real_requests(
    release: Release, platform_namespace: str, kube_api: client.ApiClient, kube_config_path: Path, tmp_path: Path
) -> None:
    (tenant,) = release.tenants
    async with as_service(kube_api, kube_config_path, release, "vnode", tmp_path) as api:
        # The vnode stage's own write: a server-side apply that creates the object, in the platform
        # namespace only.
        for namespace, expected in ((platform_namespace, None), (tenant, 403), ("kube-system", 403)):
            body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rbac-probe", "namespace": namespace},
                    "spec": {"ports": [{"port": 6443}], "selector": {"app": "vk8s"}}}  # fmt: skip
            apply = client.CoreV1Api(api).patch_namespaced_service(
                "rbac-probe", namespace, body, field_manager="vk8s-vnode", force=True,
                _content_type="application/apply-patch+yaml", dry_run="All",
            )  # fmt: skip
            if expected is None:
                await apply
                continue
            with pytest.raises(ApiException) as refused:
                await apply
            assert refused.value.status == expected, namespace
        with pytest.raises(ApiException) as refused:
            await client.CoreV1Api(api).read_namespaced_secret("anything", platform_namespace)
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
        assert binding.role_ref.name.startswith(release.role_prefix), binding.role_ref.name

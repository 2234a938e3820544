"""The chart's RBAC grants each service exactly the accesses its code uses, and nothing broad."""

from __future__ import annotations

import json

import pytest

from services.topology import NAMES as SERVICES
from tests.unit.deploy.helm import Manifest, by_component, of_kind, render
from tests.unit.deploy.rbac_expectations import (
    NEEDED,
    PLATFORM_SERVICES,
    REFUSED,
    TENANT_SERVICES,
    Access,
    platform_role,
    tenant_role,
)

TENANTS = ["team-a", "team-b"]
ROLE_PREFIX = "vk8s-system-vk8s-"  # <release namespace>-<fullname>- of helm.render
BROAD_ROLES = {"cluster-admin", "admin", "edit", "system:masters"}
DANGEROUS_VERBS = {"*", "escalate", "bind", "impersonate"}

Grant = tuple[str, str, str, str, str]  # scope, group, resource, verb, name ("": any)


def grants(manifests: list[Manifest], service: str) -> set[Grant]:
    """(scope, group, resource, verb, name) the chart gives a service; scope from the role's name suffix."""
    found: set[Grant] = set()
    for role in of_kind(manifests, "ClusterRole"):
        if role["metadata"]["labels"]["app.kubernetes.io/component"] != service:
            continue
        scope = role["metadata"]["name"].rsplit("-", 1)[1]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames", [""]):
                            found.add((scope, group, resource, verb, name))
    return found


def grant(access: Access, scope: str | None = None, *, name: str | None = None) -> Grant:
    named = access.name.format(prefix=ROLE_PREFIX) if name is None else name
    return (scope or access.scope, access.group, access.resource, access.verb, named)


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    return render()


@pytest.fixture(scope="module")
def tenant_manifests() -> list[Manifest]:
    return render({"rbac": {"tenantNamespaces": TENANTS}})


@pytest.mark.parametrize("service", SERVICES)
def test_grants_are_exactly_what_the_code_uses(manifests: list[Manifest], service: str) -> None:
    assert grants(manifests, service) == {grant(access) for access in NEEDED[service]}


@pytest.mark.parametrize("service", SERVICES)
def test_refused_accesses_are_not_granted(manifests: list[Manifest], service: str) -> None:
    granted = grants(manifests, service)
    for access in REFUSED[service]:
        scopes = ("cluster", "tenant", "platform") if access.scope != "cluster" else ("cluster",)
        for scope in scopes:
            for name in {"", grant(access)[-1]}:  # a rule without resourceNames grants every name
                assert grant(access, scope, name=name) not in granted, f"{service} may {access}"


def test_nothing_broad_or_escalating(manifests: list[Manifest], tenant_manifests: list[Manifest]) -> None:
    for rendered, bound_by_the_gateway in ((manifests, platform_roles() | tenant_roles()), (tenant_manifests, platform_roles())):
        for role in of_kind(rendered, "ClusterRole") + of_kind(rendered, "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["apiGroups"] and "*" not in rule["resources"], role["metadata"]["name"]
                dangerous = DANGEROUS_VERBS & set(rule["verbs"])
                if dangerous == {"bind"}:  # the gateway's, of the roles it binds only
                    assert role["metadata"]["name"] == f"{ROLE_PREFIX}gateway-cluster"
                    assert set(rule["resourceNames"]) == bound_by_the_gateway
                else:
                    assert not dangerous, role["metadata"]["name"]
                assert "resourceNames" not in rule or rule["resourceNames"]
        for binding in of_kind(rendered, "ClusterRoleBinding") + of_kind(rendered, "RoleBinding"):
            assert binding["roleRef"]["name"] not in BROAD_ROLES
            assert binding["roleRef"]["name"] in {r["metadata"]["name"] for r in of_kind(rendered, "ClusterRole")}
            (subject,) = binding["subjects"]
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == "vk8s-system"


def platform_roles() -> set[str]:
    return {platform_role(service).format(prefix=ROLE_PREFIX) for service in PLATFORM_SERVICES}


def tenant_roles() -> set[str]:
    return {tenant_role(service).format(prefix=ROLE_PREFIX) for service in TENANT_SERVICES}


def gateway_env(rendered: list[Manifest]) -> dict[str, str | None]:
    gateway = by_component(rendered, "Deployment")["gateway"]
    return {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("values", [{}, {"rbac": {"tenantNamespaces": TENANTS}}])
def test_platform_roles_are_bound_only_by_the_gateway(values: dict[str, object]) -> None:
    """The chart binds no platform role; the gateway is told each role with its ServiceAccount."""
    rendered = render(values)
    roles = {r["metadata"]["name"] for r in of_kind(rendered, "ClusterRole") if r["metadata"]["name"].endswith("-platform")}
    assert roles == platform_roles()
    bindings = of_kind(rendered, "ClusterRoleBinding") + of_kind(rendered, "RoleBinding")
    assert not {b["roleRef"]["name"] for b in bindings} & roles
    told = json.loads(gateway_env(rendered)["VK8S_GATEWAY_PLATFORM_BINDINGS"] or "")
    assert {(b["role"], b["service_account"], b["namespace"]) for b in told} == {
        (platform_role(service).format(prefix=ROLE_PREFIX), f"vk8s-{service}", "vk8s-system")
        for service in PLATFORM_SERVICES
    }


def test_by_default_tenant_roles_are_bound_only_by_the_gateway(manifests: list[Manifest]) -> None:
    """rbac.tenantNamespaces empty: no tenant right anywhere until the gateway binds a service's tenant role
    in a namespace it serves a Vk8s in, never in a reserved one (the host's, the release's)."""
    roles = {r["metadata"]["name"] for r in of_kind(manifests, "ClusterRole") if r["metadata"]["name"].startswith(ROLE_PREFIX)}
    assert tenant_roles() <= roles
    bound = {b["roleRef"]["name"] for b in of_kind(manifests, "ClusterRoleBinding") + of_kind(manifests, "RoleBinding")}
    assert not bound & tenant_roles()
    env = gateway_env(manifests)
    told = json.loads(env["VK8S_GATEWAY_TENANT_BINDINGS"] or "")
    assert {(b["role"], b["service_account"], b["namespace"]) for b in told} == {
        (tenant_role(service).format(prefix=ROLE_PREFIX), f"vk8s-{service}", "vk8s-system") for service in TENANT_SERVICES
    }
    assert json.loads(env["VK8S_GATEWAY_RESERVED_NAMESPACES"] or "") == [
        "kube-system", "kube-public", "kube-node-lease", "vk8s-system"
    ]


def test_a_disabled_service_gets_no_role_the_gateway_binds() -> None:
    rendered = render({"services": {"bootstrap": {"enabled": False}}})
    names = {r["metadata"]["name"] for r in of_kind(rendered, "ClusterRole")}
    roles = {name for name in names if name.endswith(("-platform", "-tenant")) and name.startswith(ROLE_PREFIX)}
    assert roles == (platform_roles() | tenant_roles()) - {f"{ROLE_PREFIX}bootstrap-platform", f"{ROLE_PREFIX}bootstrap-tenant"}
    gateway = next(r for r in of_kind(rendered, "ClusterRole") if r["metadata"]["name"] == f"{ROLE_PREFIX}gateway-cluster")
    (bind,) = [rule for rule in gateway["rules"] if "bind" in rule["verbs"]]
    assert set(bind["resourceNames"]) == roles


def test_one_service_account_per_service(manifests: list[Manifest]) -> None:
    accounts = {sa["metadata"]["name"] for sa in of_kind(manifests, "ServiceAccount")}
    assert accounts == {f"vk8s-{service}" for service in SERVICES}
    for binding in of_kind(manifests, "ClusterRoleBinding"):
        component = binding["metadata"]["labels"]["app.kubernetes.io/component"]
        assert binding["subjects"][0]["name"] == f"vk8s-{component}"


def test_tenant_namespaces_scope_the_tenant_grants(tenant_manifests: list[Manifest]) -> None:
    cluster_wide = {b["roleRef"]["name"] for b in of_kind(tenant_manifests, "ClusterRoleBinding")}
    assert cluster_wide and all(name.endswith("-cluster") for name in cluster_wide)
    # The platform roles are not the chart's to bind (the gateway binds them per platform namespace).
    tenant_bindings = of_kind(tenant_manifests, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in tenant_bindings} == set(TENANTS)
    assert all(b["roleRef"]["name"].endswith("-tenant") for b in tenant_bindings)
    tenant_roles = {
        r["metadata"]["name"]
        for r in of_kind(tenant_manifests, "ClusterRole")
        if r["metadata"]["name"].endswith("-tenant")
        and r["metadata"]["labels"]["app.kubernetes.io/component"] in SERVICES
    }
    assert not any(b["roleRef"]["name"].endswith("-platform") for b in tenant_bindings)
    assert {b["roleRef"]["name"] for b in tenant_bindings} == tenant_roles
    assert json.loads(gateway_env(tenant_manifests)["VK8S_GATEWAY_TENANT_BINDINGS"] or "") == []


def test_owner_reference_enforcement_adds_finalizer_updates_for_what_a_vk8s_owns() -> None:
    rendered = render({"rbac": {"ownerReferencesPermissionEnforcement": True}})
    for service in SERVICES:
        extra = grants(rendered, service) - {grant(access) for access in NEEDED[service]}
        expected = (
            {("tenant", "vk8s.skt.co.kr", "vk8s/finalizers", "update", "")}
            if service in ("gateway", "bootstrap", "vnode")
            else set()
        )
        assert extra == expected, service


def test_the_tenant_role_manages_vk8s_and_reads_secrets_and_nothing_else(manifests: list[Manifest]) -> None:
    """Bound by the operator in a tenant's namespace; nothing on pods, exec or StatefulSets (the vNodes')."""
    [role] = [r for r in of_kind(manifests, "ClusterRole") if r["metadata"]["name"] == "vk8s-tenant"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    verbs = ("get", "list", "watch", "create", "update", "patch", "delete")
    manage = {("vk8s.skt.co.kr", "vk8s", verb) for verb in verbs}
    assert granted == manage | {("vk8s.skt.co.kr", "vk8s/status", "get"), ("", "secrets", "get")}
    assert not [b for b in of_kind(manifests, "ClusterRoleBinding") if b["roleRef"]["name"] == "vk8s-tenant"]
    without = render({"rbac": {"tenantRole": {"create": False, "name": "x"}}})
    assert not [r for r in of_kind(without, "ClusterRole") if r["metadata"]["name"] == "x"]


def test_an_admission_policy_holds_the_gateway_to_platform_namespaces(manifests: list[Manifest]) -> None:
    """Namespace deletions and RoleBindings by the gateway's ServiceAccount only (tests/integration/deploy/test_rbac.py
    shows what it denies); not rendered where the apiserver has no ValidatingAdmissionPolicy."""
    [policy] = of_kind(manifests, "ValidatingAdmissionPolicy")
    [binding] = of_kind(manifests, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    [condition] = policy["spec"]["matchConditions"]
    assert condition["expression"] == 'request.userInfo.username == "system:serviceaccount:vk8s-system:vk8s-gateway"'
    assert {(r["resources"][0], tuple(r["operations"])) for r in policy["spec"]["matchConstraints"]["resourceRules"]} == {
        ("namespaces", ("DELETE",)),
        ("rolebindings", ("CREATE", "UPDATE")),
    }
    older = render(extra=["--kube-version", "1.29.0"])
    assert not of_kind(older, "ValidatingAdmissionPolicy") and not of_kind(older, "ValidatingAdmissionPolicyBinding")

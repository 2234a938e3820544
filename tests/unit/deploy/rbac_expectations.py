"""What each service's code does against the host apiserver, and neighbouring rights it must not have.

NEEDED is read off the services' Kubernetes adapters; the chart's rules must be exactly these
(tests/unit/deploy/test_chart_rbac.py) and the testbed must grant each of them and refuse each of
REFUSED (tests/integration/deploy/test_rbac.py), the platform ones only in a platform namespace the
gateway made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

VK8S = "vk8s.skt.co.kr"
RBAC = "rbac.authorization.k8s.io"
Scope = Literal["cluster", "tenant", "platform"]


@dataclass(frozen=True)
class Access:
    verb: str
    resource: str  # plural, with a subresource after a slash: "pods/exec", "vk8s/status"
    group: str = ""
    # cluster: a cluster-scoped object, or the resource in every namespace at once;
    # tenant: the resource in a tenant's namespace (where Vk8s objects are);
    # platform: the resource in a cluster's platform namespace (its vNodes and credentials).
    scope: Scope = "tenant"
    # One object by name; "{prefix}" stands for the release's role prefix (`<namespace>-<fullname>-`).
    name: str = ""

    def __str__(self) -> str:
        where = {"cluster": "in every namespace", "tenant": "in a tenant namespace", "platform": "in a platform namespace"}
        named = f" {self.name}" if self.name else ""
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''}{named} {where[self.scope]}"


def _all(verbs: str, resource: str, group: str = "", scope: Scope = "tenant") -> tuple[Access, ...]:
    return tuple(Access(verb, resource, group, scope) for verb in verbs.split())


# Services with rights in platform namespaces: the gateway binds their platform roles there.
PLATFORM_SERVICES = ("scheduler", "vnode", "bootstrap", "kubeflow")


# Services with rights in tenant namespaces: the gateway binds their tenant roles there (rbac.tenantNamespaces
# empty, the default; else the chart binds them in the listed namespaces).
TENANT_SERVICES = ("gateway", "scheduler", "vnode", "bootstrap", "kubeflow", "projector")


def platform_role(service: str) -> str:
    return f"{{prefix}}{service}-platform"


def tenant_role(service: str) -> str:
    return f"{{prefix}}{service}-tenant"


def also_for_tenants(service: str, access: Access) -> bool:
    """Whether a platform access of the service is one it also has in tenant namespaces (the kubeconfig
    copy bootstrap writes, the password Secret kubeflow reads), so it holds outside platform namespaces too."""
    return any(
        (other.verb, other.resource, other.group) == (access.verb, access.resource, access.group)
        for other in NEEDED[service]
        if other.scope == "tenant"
    )


# The gateway's, when rbac.tenantNamespaces is empty (else the chart binds the tenant roles itself).
TENANT_ROLE_BINDS = tuple(Access("bind", "clusterroles", RBAC, "cluster", tenant_role(service)) for service in TENANT_SERVICES)

NEEDED: dict[str, tuple[Access, ...]] = {
    # services/gateway/adapters/kubernetes.py
    "gateway": (
        *_all("get list watch", "vk8s", VK8S, "cluster"),
        *_all("get create delete", "namespaces", scope="cluster"),
        # RoleBindings of the services' platform roles in each platform namespace it creates, and of their
        # tenant roles in each namespace it serves a Vk8s in.
        *_all("get create", "rolebindings", RBAC, "cluster"),
        *(Access("bind", "clusterroles", RBAC, "cluster", platform_role(service)) for service in PLATFORM_SERVICES),
        *TENANT_ROLE_BINDS,
        *_all("create patch", "vk8s", VK8S),
        *_all("get create patch", "secrets"),
        Access("create", "events"),
        Access("patch", "vk8s/status", VK8S),
    ),
    # services/scheduler/adapters/inventory.py: list + watch of nodes and of assigned pods;
    # adapters/placeholders.py: placeholder pods in the clusters' namespaces
    "scheduler": (
        *_all("list watch", "nodes", scope="cluster"),
        *_all("list watch", "pods", scope="cluster"),
        *_all("get create delete", "pods", scope="platform"),
        # services/scheduler/adapters/clusters.py: is the asking Vk8s still there?
        Access("get", "vk8s", VK8S),
    ),
    # services/ipmanager/adapters/pods.py: paged list of vNode pods in every namespace
    "ipmanager": (Access("list", "pods", scope="cluster"),),
    # services/vnode/adapters/kube.py: server-side apply (a patch, and a create for a new object),
    # label-selected lists and deletes,
    # and the tracker's watch of vNode StatefulSets everywhere
    "vnode": (
        *_all("list watch", "statefulsets", "apps", "cluster"),
        *_all("get patch", "namespaces", scope="cluster"),
        *_all("create patch delete", "statefulsets", "apps", "platform"),
        *_all("list create patch delete", "deployments", "apps", "platform"),
        *_all("list create patch delete", "services", scope="platform"),
        *_all("list delete", "persistentvolumeclaims", scope="platform"),
        *_all("create patch delete", "networkpolicies", "networking.k8s.io", "platform"),
        *_all("list delete", "pods", scope="platform"),
        Access("get", "vk8s", VK8S),
    ),
    # services/bootstrap/adapters/{node_exec,host}.py: exec by pod name (after reading the pod and its
    # StatefulSet), the owner, the kubeconfig Secret (in the platform namespace, and its tenant's copy)
    "bootstrap": (
        Access("create", "pods/exec", scope="platform"),
        Access("get", "pods", scope="platform"),
        Access("get", "statefulsets", "apps", "platform"),
        *_all("create update", "secrets", scope="platform"),
        Access("get", "vk8s", VK8S),
        *_all("create update", "secrets"),
    ),
    # services/kubeflow/adapters/host.py: the Vk8s and the user's password Secret, the inner kubeconfig
    "kubeflow": (Access("get", "vk8s", VK8S), Access("get", "secrets"), Access("get", "secrets", scope="platform")),
    # services/projector/adapters/status.py
    "projector": (Access("patch", "vk8s/status", VK8S),),
}

_NOBODY: tuple[Access, ...] = (
    Access("escalate", "clusterroles", RBAC, "cluster"),
    Access("bind", "clusterroles", RBAC, "cluster"),
    Access("create", "clusterrolebindings", RBAC, "cluster"),
    Access("create", "rolebindings", RBAC),
    Access("impersonate", "serviceaccounts"),
    Access("create", "serviceaccounts/token"),
    Access("list", "secrets", scope="cluster"),
    Access("update", "namespaces", scope="cluster"),
    Access("create", "daemonsets", "apps"),
    Access("delete", "customresourcedefinitions", "apiextensions.k8s.io", "cluster"),
)

REFUSED: dict[str, tuple[Access, ...]] = {
    "gateway": (
        # Only the platform and tenant roles: no other role, nor a ClusterRoleBinding.
        Access("bind", "clusterroles", RBAC, "cluster", "cluster-admin"),
        Access("bind", "clusterroles", RBAC, "cluster", "admin"),
        Access("bind", "clusterroles", RBAC, "cluster", "{prefix}scheduler-cluster"),
        *_all("delete update", "vk8s", VK8S),
        Access("update", "vk8s/status", VK8S),
        *_all("list delete", "secrets"),
        Access("get", "pods"),
        Access("create", "pods"),
    ),
    "scheduler": (
        Access("get", "secrets"),
        *_all("patch delete", "nodes", scope="cluster"),
        *_all("patch update", "pods"),
        Access("create", "pods/binding"),
        Access("list", "vk8s", VK8S, "cluster"),
    ),
    "ipmanager": (
        Access("watch", "pods", scope="cluster"),
        Access("list", "nodes", scope="cluster"),
        *_all("patch delete", "pods"),
        Access("get", "secrets"),
    ),
    "vnode": (
        Access("get", "secrets"),
        Access("create", "pods/exec"),
        *_all("create patch", "pods"),
        Access("update", "statefulsets", "apps"),
        Access("create", "persistentvolumeclaims"),
        Access("patch", "vk8s", VK8S),
        Access("patch", "vk8s/status", VK8S),
        Access("delete", "nodes", scope="cluster"),
    ),
    "bootstrap": (
        *_all("create delete patch", "pods"),
        Access("get", "pods/exec"),
        *_all("get list delete", "secrets"),
        Access("patch", "statefulsets", "apps"),
        Access("patch", "vk8s/status", VK8S),
    ),
    "kubeflow": (
        *_all("list create patch", "secrets"),
        Access("get", "pods"),
        Access("create", "pods/exec"),
    ),
    "projector": (
        Access("patch", "vk8s", VK8S),
        Access("update", "vk8s/status", VK8S),
        Access("delete", "vk8s", VK8S),
        Access("get", "secrets"),
    ),
}
# Only the gateway deletes namespaces (a cluster's platform namespace) and binds roles (the platform roles in them).
_GATEWAYS = (Access("delete", "namespaces", scope="cluster"), Access("create", "rolebindings", RBAC))
REFUSED = {
    name: (
        *refused,
        *(a for a in _NOBODY if name != "gateway" or a not in _GATEWAYS),
        *(() if name == "gateway" else _GATEWAYS),
    )
    for name, refused in REFUSED.items()
}

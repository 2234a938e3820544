"""What each service's code does against the host apiserver, and neighbouring rights it must not have.

NEEDED is read off the services' Kubernetes adapters; the chart's rules must be exactly these
(tests/unit/deploy/test_chart_rbac.py) and the testbed must grant each of them and refuse each of
REFUSED (tests/integration/deploy/test_rbac.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

VK8S = "vk8s.skt.co.kr"


@dataclass(frozen=True)
class Access:
    verb: str
    resource: str  # plural, with a subresource after a slash: "pods/exec", "vk8s/status"
    group: str = ""
    # cluster: a cluster-scoped object, or the resource in every namespace at once;
    # tenant: the resource in one virtual cluster's namespace.
    scope: Literal["cluster", "tenant"] = "tenant"

    def __str__(self) -> str:
        where = "in every namespace" if self.scope == "cluster" else "in a tenant namespace"
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''} {where}"


def _all(
    verbs: str, resource: str, group: str = "", scope: Literal["cluster", "tenant"] = "tenant"
) -> tuple[Access, ...]:
    return tuple(Access(verb, resource, group, scope) for verb in verbs.split())


NEEDED: dict[str, tuple[Access, ...]] = {
    # services/gateway/adapters/kubernetes.py
    "gateway": (
        *_all("get list watch", "vk8s", VK8S, "cluster"),
        *_all("get create delete", "namespaces", scope="cluster"),
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
        *_all("get create delete", "pods"),
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
        *_all("create patch delete", "statefulsets", "apps"),
        *_all("list create patch delete", "deployments", "apps"),
        *_all("list create patch delete", "services"),
        *_all("list delete", "persistentvolumeclaims"),
        *_all("create patch delete", "networkpolicies", "networking.k8s.io"),
        *_all("list delete", "pods"),
        Access("get", "vk8s", VK8S),
    ),
    # services/bootstrap/adapters/{node_exec,host}.py: exec by pod name (after reading the pod and its
    # StatefulSet), the owner, the kubeconfig Secret
    "bootstrap": (
        Access("create", "pods/exec"),
        Access("get", "pods"),
        Access("get", "statefulsets", "apps"),
        Access("get", "vk8s", VK8S),
        *_all("create update", "secrets"),
    ),
    # services/kubeflow/adapters/host.py
    "kubeflow": (Access("get", "vk8s", VK8S), Access("get", "secrets")),
    # services/projector/adapters/status.py
    "projector": (Access("patch", "vk8s/status", VK8S),),
}

_NOBODY: tuple[Access, ...] = (
    Access("escalate", "clusterroles", "rbac.authorization.k8s.io", "cluster"),
    Access("bind", "clusterroles", "rbac.authorization.k8s.io", "cluster"),
    Access("create", "clusterrolebindings", "rbac.authorization.k8s.io", "cluster"),
    Access("create", "rolebindings", "rbac.authorization.k8s.io"),
    Access("impersonate", "serviceaccounts"),
    Access("create", "serviceaccounts/token"),
    Access("list", "secrets", scope="cluster"),
    Access("update", "namespaces", scope="cluster"),
    Access("create", "daemonsets", "apps"),
    Access("delete", "customresourcedefinitions", "apiextensions.k8s.io", "cluster"),
)

REFUSED: dict[str, tuple[Access, ...]] = {
    "gateway": (
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
# Only the gateway deletes namespaces (a cluster's platform namespace).
REFUSED = {
    name: (*refused, *_NOBODY, *(() if name == "gateway" else (Access("delete", "namespaces", scope="cluster"),)))
    for name, refused in REFUSED.items()
}

"""Names and labels of vNode objects: the vnode stage makes them, the scheduler recognises their
pods by them (the pod's name and owning StatefulSet, which a tenant's pod cannot share with a
running vNode, not only labels anyone can copy). The scheduler's placeholder pod holds a booked
vNode's resources on its host until the vnode stage deletes it to start the vNode pod there.

Every object of a virtual cluster that a tenant must not touch (vNode pods, their StatefulSets,
Services, volume claims, placeholders, the inner admin kubeconfig) lives in the cluster's platform
namespace (`platform_namespace`), which the gateway creates before accepting the cluster and
deletes before releasing it; tenants get no rights there. Objects in it carry no owner reference
to the Vk8s (an owner in another namespace would make the garbage collector delete them) but the
labels of `cluster_labels`, the tenant namespace among them."""

from __future__ import annotations

import hashlib
from typing import Any

from libs.api.models import GROUP

APP = "vk8s"
APP_LABEL = "app"
CLUSTER_LABEL = "clusterName"
VNODE_LABEL = "vnode"
CLUSTER_UID_LABEL = f"{GROUP}/cluster-uid"
TENANT_NAMESPACE_LABEL = f"{GROUP}/tenant-namespace"
COMPONENT_LABEL = f"{GROUP}/component"
VNODE_COMPONENT = "vnode"
PLACEHOLDER_COMPONENT = "placeholder"
# Keeps a deleted placeholder counted by kube-scheduler until the vNode pod is there to take the
# room (the scheduler removes it then); without it a pending pod could slip in between.
PLACEHOLDER_FINALIZER = f"{GROUP}/placeholder"

# On a platform namespace: the vnode stage kept the cluster's volume claims in it (retain-volumes),
# so the gateway leaves the namespace to the operator instead of deleting it.
RETAINED_VOLUMES_ANNOTATION = f"{GROUP}/retained-volumes"
# A namespace name is a DNS label.
MAX_NAMESPACE_NAME = 63

# A StatefulSet's pods carry `controller-revision-hash: <name>-<10 chars>`, a label value (<= 63).
MAX_STATEFULSET_NAME = 52


def bounded(name: str, limit: int) -> str:
    """`name`, or when longer than `limit` a prefix of it plus a hash of all of it (still unique)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - len(digest) - 1].rstrip('-')}-{digest}"


def statefulset_name(cluster: str, vnode: str) -> str:
    """`<cluster>-<vnode>`: node names repeat across clusters (every cluster has a `master`), so the
    cluster name keeps them apart within a namespace. The rare pair that still collides
    (`a` + `b-c` vs `a-b` + `c`) is refused by the vnode stage (`services.vnode.logic.clashes`)."""
    return bounded(f"{cluster}-{vnode}", MAX_STATEFULSET_NAME)


def pod_name(cluster: str, vnode: str) -> str:
    return f"{statefulset_name(cluster, vnode)}-0"


def placeholder_name(cluster: str, vnode: str) -> str:
    """`<cluster>-<vnode>-hold`: one per vNode, never a StatefulSet's pod name (those end in `-0`)."""
    return f"{statefulset_name(cluster, vnode)}-hold"


def platform_namespace(tenant_namespace: str, cluster: str) -> str:
    """`vk8s-<tenant namespace>-<cluster>-<hash>`, at most 63 characters: readable where it fits,
    and the hash of both names keeps apart pairs that read alike (`a` + `b-c`, `a-b` + `c`) or were
    shortened alike. One per cluster name: the gateway releases a deleted cluster only once its
    namespace is gone, so a new cluster of the same name never meets the old one's objects."""
    digest = hashlib.sha256(f"{tenant_namespace}/{cluster}".encode()).hexdigest()[:8]
    readable = f"vk8s-{tenant_namespace}-{cluster}".replace(".", "-")
    return f"{readable[: MAX_NAMESPACE_NAME - len(digest) - 1].rstrip('-')}-{digest}"


def cluster_labels(tenant_namespace: str, cluster: str, uid: str) -> dict[str, str]:
    """Which Vk8s an object of a platform namespace (and the namespace itself) belongs to."""
    return {APP_LABEL: APP, CLUSTER_LABEL: cluster, CLUSTER_UID_LABEL: uid, TENANT_NAMESPACE_LABEL: tenant_namespace}


def platform_namespace_body(tenant_namespace: str, cluster: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": platform_namespace(tenant_namespace, cluster),
            "labels": cluster_labels(tenant_namespace, cluster, uid),
        },
    }

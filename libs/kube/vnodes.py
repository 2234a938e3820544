"""Names and labels of vNode objects: the vnode stage makes them, the scheduler recognises their
pods by them (the pod's name and owning StatefulSet, which a tenant's pod cannot share with a
running vNode, not only labels anyone can copy). The scheduler's placeholder pod holds a booked
vNode's resources on its host until the vnode stage deletes it to start the vNode pod there."""

from __future__ import annotations

import hashlib

from libs.api.models import GROUP

APP = "vk8s"
APP_LABEL = "app"
CLUSTER_LABEL = "clusterName"
VNODE_LABEL = "vnode"
CLUSTER_UID_LABEL = f"{GROUP}/cluster-uid"
COMPONENT_LABEL = f"{GROUP}/component"
VNODE_COMPONENT = "vnode"
PLACEHOLDER_COMPONENT = "placeholder"
# Keeps a deleted placeholder counted by kube-scheduler until the vNode pod is there to take the
# room (the scheduler removes it then); without it a pending pod could slip in between.
PLACEHOLDER_FINALIZER = f"{GROUP}/placeholder"

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

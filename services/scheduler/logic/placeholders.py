"""The placeholder pods that hold a reservation's GPUs against other pods until the vNode pods run."""

from __future__ import annotations

from typing import Any

from libs.api.models import GPU_RESOURCE, GROUP
from libs.kube import vnodes as vnode_names
from services.scheduler.logic.inventory import Inventory
from services.scheduler.logic.records import Reservation, ReservedVNode

HOLDS_ANNOTATION = f"{GROUP}/holds"


def namespace_and_name(cluster_id: str) -> tuple[str, str]:
    namespace, name = cluster_id.split("/", 1)
    return namespace, name


def placeholders_wanted(reservation: Reservation, inventory: Inventory) -> list[ReservedVNode]:
    """The booked vNodes whose own pod is not on their host yet: a placeholder pod holds their
    resources there, so kube-scheduler puts no other pod in the room kept for them."""
    running = inventory.vnode_hosts(reservation.uid)
    return [v for v in reservation.active() if running.get(v.vnode) != v.host_node]


def placeholder_pod(reservation: Reservation, vnode: ReservedVNode, image: str) -> dict[str, Any]:
    """A pod doing nothing, pinned to the vNode's host with the vNode's requests, in the cluster's
    platform namespace. It tolerates every taint: the host was chosen for the vNode. Its finalizer keeps it
    (and its room, to kube-scheduler) after the vnode stage deletes it, until the scheduler sees
    the vNode pod on the host or the booking goes."""
    namespace, name = namespace_and_name(reservation.cluster_id)
    requests = {"cpu": f"{vnode.cpu_millis}m", "memory": str(vnode.memory_bytes)}
    if vnode.gpus:
        requests[GPU_RESOURCE] = str(vnode.gpus)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": vnode_names.placeholder_name(name, vnode.vnode),
            # Beside the vNode pods; no owner reference (the Vk8s is in the tenant's namespace).
            "namespace": vnode_names.platform_namespace(namespace, name),
            "labels": {
                **vnode_names.cluster_labels(namespace, name, reservation.uid),
                vnode_names.VNODE_LABEL: vnode.vnode,
                vnode_names.COMPONENT_LABEL: vnode_names.PLACEHOLDER_COMPONENT,
            },
            # What it holds, to tell a placeholder left from an earlier placement from the wanted one.
            "annotations": {HOLDS_ANNOTATION: holds(vnode)},
            "finalizers": [vnode_names.PLACEHOLDER_FINALIZER],
        },
        "spec": {
            "nodeName": vnode.host_node,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "hold", "image": image, "resources": {"requests": requests, "limits": requests}}],
        },
    }


def holds(vnode: ReservedVNode) -> str:
    return f"{vnode.host_node}/{vnode.gpus}/{vnode.cpu_millis}m/{vnode.memory_bytes}"

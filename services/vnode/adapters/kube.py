"""The host cluster: server-side apply of the vNode objects (field manager `vk8s-vnode`, so fields
this stage stops setting, e.g. a label removed from the Vk8s, are removed), deletes that treat 404
as done, and what the planning and the rollout tracker read."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from kubernetes.aio import client
from kubernetes.aio.client import ApiClient
from kubernetes.aio.client.exceptions import ApiException

from libs.events import PermanentError, Reason
from libs.kube import metadata_of, name_of, not_found, read_vk8s, vnodes
from libs.kube.vnodes import RETAINED_VOLUMES_ANNOTATION, TENANT_NAMESPACE_LABEL
from services.vnode import logic
from services.vnode.adapters.metrics import VNodeMetrics

FIELD_MANAGER = "vk8s-vnode"
APPLY_PATCH = "application/apply-patch+yaml"
VNODE_SELECTOR = f"{vnodes.APP_LABEL}={vnodes.APP},{vnodes.COMPONENT_LABEL}={vnodes.VNODE_COMPONENT}"

log = structlog.get_logger(__name__)


class HostObjects(Protocol):
    """What the handlers read and change on the host cluster (VNodeObjects does it)."""

    async def read_vk8s(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def statefulsets(self, namespace: str) -> list[logic.CurrentStatefulSet]: ...

    async def execute(self, plan: logic.Plan) -> None: ...

    async def delete_cluster(self, namespace: str, uid: str, *, retain_volumes: bool) -> list[str]: ...

    async def mark_volumes_retained(self, namespace: str, uid: str) -> None: ...


class WatchedObjects(Protocol):
    """What the rollout tracker reads of the host cluster (VNodeObjects does it)."""

    @property
    def list_vnode_statefulsets(self) -> Callable[..., Awaitable[Any]]: ...

    def rollout(self, statefulset: Any) -> logic.VNodeRollout | None: ...

    async def pod_problems(self, namespace: str, uid: str) -> list[str]: ...


class VNodeObjects:
    def __init__(self, api: ApiClient, metrics: VNodeMetrics, *, ip_annotation: str):
        self._api = api
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)
        self._networking = client.NetworkingV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._metrics = metrics
        self._ip_annotation = ip_annotation

    @property
    def list_vnode_statefulsets(self) -> Callable[..., Awaitable[Any]]:
        """The list function to watch every vNode StatefulSet with (`label_selector=VNODE_SELECTOR`)."""
        return self._apps.list_stateful_set_for_all_namespaces

    async def read_vk8s(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_vk8s(self._custom.api_client, namespace, name)

    async def statefulsets(self, namespace: str) -> list[logic.CurrentStatefulSet]:
        listing = await self._apps.list_namespaced_stateful_set(namespace, label_selector=VNODE_SELECTOR)
        current = []
        for item in listing.items:
            labels = metadata_of(item).labels or {}
            claims = self._api.sanitize_for_serialization(item.spec.volume_claim_templates or [])
            current.append(
                logic.CurrentStatefulSet(
                    name=name_of(item),
                    cluster=labels.get(vnodes.CLUSTER_LABEL),
                    vnode=labels.get(vnodes.VNODE_LABEL),
                    uid=labels.get(vnodes.CLUSTER_UID_LABEL),
                    volume_claim_templates=tuple(claims),
                )
            )
        return current

    def rollout(self, statefulset: Any) -> logic.VNodeRollout | None:
        """What the rollout tracker needs of a watched StatefulSet; None for one that is not a vNode's."""
        labels = statefulset.metadata.labels or {}
        cluster, vnode, uid, tenant_namespace = (
            labels.get(k)
            for k in (vnodes.CLUSTER_LABEL, vnodes.VNODE_LABEL, vnodes.CLUSTER_UID_LABEL, TENANT_NAMESPACE_LABEL)
        )
        if cluster is None or vnode is None or uid is None or tenant_namespace is None:
            return None
        spec, status, template = statefulset.spec, statefulset.status, statefulset.spec.template
        return logic.VNodeRollout(
            namespace=statefulset.metadata.namespace,
            tenant_namespace=tenant_namespace,
            name=statefulset.metadata.name,
            cluster=cluster,
            vnode=vnode,
            uid=uid,
            generation=statefulset.metadata.generation or 0,
            observed_generation=(status.observed_generation if status else None) or 0,
            replicas=spec.replicas if spec.replicas is not None else 1,
            status_replicas=(status.replicas if status else None) or 0,
            ready_replicas=(status.ready_replicas if status else None) or 0,
            updated_replicas=(status.updated_replicas if status else None) or 0,
            current_revision=status.current_revision if status else None,
            update_revision=status.update_revision if status else None,
            node_name=template.spec.node_name,
            ip_annotation=(template.metadata.annotations or {}).get(self._ip_annotation),
        )

    async def execute(self, plan: logic.Plan) -> None:
        for name in plan.placeholders:
            await self.delete("Pod", plan.namespace, name)
        for body in plan.apply:
            await self.apply(body)
        for ref in plan.delete:
            await self.delete(ref.kind, plan.namespace, ref.name)

    async def apply(self, body: dict[str, Any]) -> None:
        kind, name, namespace = body["kind"], body["metadata"]["name"], body["metadata"]["namespace"]
        patch = {
            "StatefulSet": self._apps.patch_namespaced_stateful_set,
            "Deployment": self._apps.patch_namespaced_deployment,
            "Service": self._core.patch_namespaced_service,
            "NetworkPolicy": self._networking.patch_namespaced_network_policy,
        }[kind]
        try:
            await patch(name, namespace, body, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)
        except ApiException as error:
            if error.status in (400, 422):
                message = f"{kind} {namespace}/{name} is refused: {_message(error)}"
                raise PermanentError(message, reason=Reason.INVALID_OBJECT) from None
            raise
        self._metrics.objects_applied.labels(kind).inc()

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Deletes an object (its dependents in the background); False when it was gone already."""
        remove = {
            "StatefulSet": self._apps.delete_namespaced_stateful_set,
            "Deployment": self._apps.delete_namespaced_deployment,
            "Service": self._core.delete_namespaced_service,
            "PersistentVolumeClaim": self._core.delete_namespaced_persistent_volume_claim,
            "Pod": self._core.delete_namespaced_pod,
            "NetworkPolicy": self._networking.delete_namespaced_network_policy,
        }[kind]
        try:
            # A placeholder pod runs nothing worth a grace period; the vNode pod needs its room now.
            grace = 0 if kind == "Pod" else None
            await remove(name, namespace, propagation_policy="Background", grace_period_seconds=grace)
        except ApiException as error:
            if not_found(error):
                return False
            raise
        self._metrics.objects_deleted.labels(kind).inc()
        log.info("Deleted object", kind=kind, namespace=namespace, name=name)
        return True

    async def delete_cluster(self, namespace: str, uid: str, *, retain_volumes: bool) -> list[str]:
        """Deletes every object of one cluster incarnation; returns those still present (`Kind/name`),
        pods included (placeholders aside), so the caller knows when all is gone."""
        selector = logic.cluster_selector(uid)
        listings: dict[str, Callable[..., Awaitable[Any]]] = {
            "StatefulSet": self._apps.list_namespaced_stateful_set,
            "Deployment": self._apps.list_namespaced_deployment,
            "Service": self._core.list_namespaced_service,
        }
        if not retain_volumes:
            listings["PersistentVolumeClaim"] = self._core.list_namespaced_persistent_volume_claim
        remaining = []
        for kind, list_fn in listings.items():
            for item in (await list_fn(namespace, label_selector=selector)).items:
                if item.metadata.deletion_timestamp is None:
                    await self.delete(kind, namespace, item.metadata.name)
                remaining.append(f"{kind}/{item.metadata.name}")
        pods = await self._core.list_namespaced_pod(namespace, label_selector=logic.deleted_pods_selector(uid))
        remaining += [f"Pod/{name_of(pod)}" for pod in pods.items]
        return remaining

    async def mark_volumes_retained(self, namespace: str, uid: str) -> None:
        """Tells the gateway to keep the platform namespace (it holds the retained claims); only a
        namespace of this cluster uid, and one that is there."""
        try:
            found = await self._core.read_namespace(namespace)
        except ApiException as error:
            if not_found(error):
                return
            raise
        if (metadata_of(found).labels or {}).get(vnodes.CLUSTER_UID_LABEL) != uid:
            return
        patch = {"metadata": {"annotations": {RETAINED_VOLUMES_ANNOTATION: "true"}}}
        await self._core.patch_namespace(namespace, patch)

    async def pod_problems(self, namespace: str, uid: str) -> list[str]:
        """Why the vNode pods of a cluster are not running, e.g. `team-a-master-0: Pending (ImagePullBackOff)`."""
        selector = f"{logic.cluster_selector(uid)},{vnodes.COMPONENT_LABEL}={vnodes.VNODE_COMPONENT}"
        pods = await self._core.list_namespaced_pod(namespace, label_selector=selector)
        problems = []
        for pod in pods.items:
            status = pod.status or client.V1PodStatus()  # none reported yet: no phase, no containers
            reasons = [
                state.waiting.reason
                for state in [c.state for c in (status.container_statuses or [])]
                if state is not None and state.waiting is not None and state.waiting.reason
            ]
            if status.phase != "Running" or reasons:
                detail = f" ({', '.join(reasons)})" if reasons else ""
                problems.append(f"{name_of(pod)}: {status.phase}{detail}")
        return problems


def _message(error: ApiException) -> str:
    try:
        message: str = json.loads(error.body or "")["message"]
        return message
    except (TypeError, ValueError, KeyError):
        return str(error.reason)

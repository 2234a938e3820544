"""Placeholder pods: the scheduler's bookings made visible to kube-scheduler.

A booking lives in the scheduler's ledger; kube-scheduler only counts pods. Until the vNode pod
runs on its host, a placeholder pod pinned there with the vNode's requests keeps kube-scheduler
from filling the room with other pods (which would get the vNode pod, pinned by nodeName,
rejected by the kubelet). The vnode stage deletes the placeholder right before it starts the
vNode pod; its finalizer keeps it counted until the scheduler sees the vNode pod on the host (or
the booking goes) and removes it.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from libs.events import Reason, TransientError
from libs.kube import ApiClient, conflict, not_found
from libs.kube.vnodes import CLUSTER_UID_LABEL, PLACEHOLDER_FINALIZER, placeholder_name, platform_namespace
from services.scheduler.logic import (
    HOLDS_ANNOTATION,
    BookingKey,
    Reservation,
    ReservedVNode,
    namespace_and_name,
    placeholder_pod,
)

log = structlog.get_logger(__name__)


class Placeholders(Protocol):
    """The placeholder pods as the scheduler drives them (PlaceholderPods does it)."""

    async def hold(self, reservation: Reservation, vnode: ReservedVNode) -> None: ...

    async def release(self, cluster_id: str, vnode: BookingKey) -> None: ...

    async def release_pod(self, namespace: str, name: str, uid: str) -> None: ...


class PlaceholderPods:
    def __init__(self, api: ApiClient, image: str):
        self._core = client.CoreV1Api(api)
        self._image = image

    async def hold(self, reservation: Reservation, vnode: ReservedVNode) -> None:
        """Creates the vNode's placeholder, or replaces one that holds something else (another host
        or size, an earlier cluster of the same name, or one deleted already). Idempotent."""
        body = placeholder_pod(reservation, vnode, self._image)
        metadata = body["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        for _ in range(3):
            try:
                await self._core.create_namespaced_pod(namespace, body)  # type: ignore[arg-type]  # a dict body is sent as it is
            except ApiException as error:
                if not conflict(error):
                    raise
            else:
                log.info("Holding a booking with a placeholder pod", pod=f"{namespace}/{name}")
                return
            existing = await self._read(namespace, name)
            if existing is None:
                continue  # gone in between: create again
            labels, annotations = existing.metadata.labels or {}, existing.metadata.annotations or {}
            if (
                existing.metadata.deletion_timestamp is None
                and labels.get(CLUSTER_UID_LABEL) == metadata["labels"][CLUSTER_UID_LABEL]
                and annotations.get(HOLDS_ANNOTATION) == metadata["annotations"][HOLDS_ANNOTATION]
            ):
                return
            await self._remove(existing)
        raise TransientError(f"placeholder pod {namespace}/{name} kept being replaced", reason=Reason.PLACEHOLDER_RACE)

    async def release(self, cluster_id: str, vnode: BookingKey) -> None:
        """Removes the vNode's placeholder (its finalizer too), if it is this cluster uid's."""
        uid, vnode_name = vnode
        namespace, name = namespace_and_name(cluster_id)
        await self.release_pod(platform_namespace(namespace, name), placeholder_name(name, vnode_name), uid)

    async def release_pod(self, namespace: str, name: str, uid: str) -> None:
        existing = await self._read(namespace, name)
        if existing is not None and (existing.metadata.labels or {}).get(CLUSTER_UID_LABEL) == uid:
            await self._remove(existing)
            log.info("Released a placeholder pod", pod=f"{namespace}/{name}")

    async def _read(self, namespace: str, name: str) -> Any:
        try:
            return await self._core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if not_found(error):
                return None
            raise

    async def _remove(self, pod: Any) -> None:
        metadata = pod.metadata
        try:
            if metadata.deletion_timestamp is None:
                # The precondition keeps a placeholder created meanwhile (same name, new uid) alive.
                options = client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=metadata.uid)
                )
                await self._core.delete_namespaced_pod(metadata.name, metadata.namespace, body=options)
            if PLACEHOLDER_FINALIZER in (metadata.finalizers or ()):
                kept = [f for f in metadata.finalizers if f != PLACEHOLDER_FINALIZER]
                # A JSON patch testing the uid: never strips the finalizer of a newer placeholder.
                patch = [
                    {"op": "test", "path": "/metadata/uid", "value": metadata.uid},
                    {"op": "replace", "path": "/metadata/finalizers", "value": kept},
                ]
                await self._core.patch_namespaced_pod(
                    metadata.name, metadata.namespace, patch, _content_type="application/json-patch+json"
                )
        except ApiException as error:
            # Gone, or replaced by a newer one (the test or the precondition failed): nothing of ours left.
            if not (not_found(error) or conflict(error) or error.status == 422):
                raise

"""The subscriptions of the vnode stage: each reads the cluster record, lets `logic` decide, applies
the result to the host cluster, then writes the record (compare-and-set) so a redelivery redoes
whatever did not complete. Readiness and pause completion are published by the RolloutTracker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import structlog

from libs.events import Envelope, Publishes, Reason, TransientError, declare, subscriber
from libs.events.catalog import (
    ClusterAccepted,
    ClusterDeleteRequested,
    ClusterFailed,
    ClusterIPsAllocated,
    ClusterPaused,
    ClusterUpdated,
    ClusterVNodesDeleted,
    ClusterVNodesReady,
)
from libs.kube import vnodes
from services.vnode import logic
from services.vnode.adapters.kube import HostObjects
from services.vnode.adapters.store import RecordStore
from services.vnode.settings import VNodeSettings

log = structlog.get_logger(__name__)


class RolloutWaits(Protocol):
    """The rollout tracker as the handlers see it: told of each wait they record."""

    def kick(self, cluster_id: str) -> None: ...


class VNodeHandlers:
    def __init__(
        self,
        *,
        settings: VNodeSettings,
        store: RecordStore,
        kube: HostObjects,
        tracker: RolloutWaits,
        clock: Callable[[], datetime],
    ):
        self._settings = settings
        self._store = store
        self._kube = kube
        self._tracker = tracker
        self._clock = clock

    @subscriber(ClusterAccepted, ClusterUpdated)
    async def on_spec(
        self, envelope: Envelope[ClusterAccepted] | Envelope[ClusterUpdated]
    ) -> Sequence[Envelope[Any]]:
        """Keeps the spec for the allocation to come; once allocated, applies labels, annotations,
        ports and pause (replicas 0) right away."""
        stored = await self._store.get(envelope.cluster_id)
        record = logic.on_spec_event(stored.record if stored else None, envelope)
        if isinstance(record, logic.Ignore):
            log.info("Ignoring spec event", reason=record.reason)
            return []
        if record.allocation is not None:
            if await self._live_uid(record) != record.uid:
                log.info("Ignoring spec event of a cluster that is gone or being deleted")
                return []
            await self._apply(record)
        await self._store.save(record, stored.revision if stored else None)
        if record.awaiting is not None:
            self._tracker.kick(record.cluster_id)
        return []

    @subscriber(ClusterIPsAllocated)
    async def on_allocated(self, envelope: Envelope[ClusterIPsAllocated]) -> Sequence[Envelope[Any]]:
        """Creates or scales up the vNodes where the scheduler placed them, with their fixed IPs."""
        stored = await self._store.get(envelope.cluster_id)
        namespace, name = envelope.cluster_id.split("/")
        vk8s = await self._kube.read_vk8s(namespace, name)
        if vk8s is None or vk8s["metadata"].get("deletionTimestamp"):
            log.info("Ignoring allocation of a cluster that is gone or being deleted")
            return []
        live_uid = vk8s["metadata"]["uid"]
        allocated_for = envelope.data.uid
        if allocated_for is not None and allocated_for != live_uid:
            log.info("Ignoring allocation of an earlier Vk8s of the same name", allocated_for=allocated_for)
            return []
        known = stored.record if stored is not None else None
        if known is None or known.uid != live_uid or known.generation < envelope.data.generation:
            # The spec event is not taken in yet: the object it comes from says the same.
            known = logic.with_object_spec(known, vk8s, allocated_for=allocated_for)
            if known is None:
                raise TransientError("the Vk8s was re-created; waiting for its spec", reason=Reason.SPEC_NOT_RECORDED)
        record = logic.on_allocated(known, envelope, self._clock(), resume_grace_s=self._settings.resume_grace_s)
        if isinstance(record, logic.Ignore):
            log.info("Ignoring allocation", reason=record.reason)
            return []
        await self._apply(record)
        await self._store.save(record, stored.revision if stored is not None else None)
        self._tracker.kick(record.cluster_id)
        return []

    @subscriber(ClusterDeleteRequested, emits=(ClusterVNodesDeleted,))
    async def on_delete_requested(self, envelope: Envelope[ClusterDeleteRequested]) -> Sequence[Envelope[Any]]:
        """Deletes the cluster's objects (volumes unless retained), and answers once all are gone;
        only when the Vk8s object of that uid is being deleted or gone (a request alone is refused).

        The objects live in the cluster's platform namespace, which the gateway deletes before it
        releases the Vk8s; they are deleted here one by one all the same, so the pipeline's later
        stages (IPs, bookings) are freed only once no vNode pod runs. Retained volumes keep the
        namespace: it is marked so, and the gateway leaves it (with the claims) to the operator."""
        uid = envelope.data.uid
        namespace, name = envelope.cluster_id.split("/")
        live = await self._kube.read_vk8s(namespace, name)
        if live is not None and live["metadata"]["uid"] == uid and not live["metadata"].get("deletionTimestamp"):
            # The event alone is not enough: only an object being deleted, or gone, loses its vNodes.
            log.warning("Refused cluster.delete.requested: the Vk8s object is not being deleted", uid=uid)
            return []
        stored = await self._store.get(envelope.cluster_id)
        record = stored.record if stored is not None and stored.record.uid == uid else None
        revision = stored.revision if stored is not None else None
        if record is not None and not record.deleting:
            record = record.model_copy(update={"deleting": True, "awaiting": None})
            revision = await self._store.save(record, revision)
        live_annotations = None
        if record is None:
            # Redelivered after the record went: the object (held by its finalizer until
            # cluster.deleted) says whether the volumes stay, never the service default alone.
            vk8s = await self._kube.read_vk8s(namespace, name)
            if vk8s is not None and vk8s["metadata"]["uid"] == uid:
                live_annotations = vk8s["metadata"].get("annotations") or {}
        retain = logic.retain_volumes_on_delete(record, live_annotations, self._settings.retain_volumes)
        platform_namespace = vnodes.platform_namespace(namespace, name)
        remaining = await self._kube.delete_cluster(platform_namespace, uid, retain_volumes=retain)
        if remaining:
            shown = ", ".join(remaining[:5]) + (", ..." if len(remaining) > 5 else "")
            raise TransientError(f"waiting for {len(remaining)} object(s) to go: {shown}", reason=Reason.DELETING)
        if retain:
            await self._kube.mark_volumes_retained(platform_namespace, uid)
        if record is not None and revision is not None:
            await self._store.delete(envelope.cluster_id, revision)
        log.info("Deleted cluster objects", retained_volumes=retain)
        return [envelope.follow(ClusterVNodesDeleted(uid=uid), now=self._clock())]

    async def _live_uid(self, record: logic.ClusterRecord) -> str | None:
        """uid of the cluster's Vk8s object, None when it is gone or being deleted."""
        vk8s = await self._kube.read_vk8s(record.namespace, record.name)
        if vk8s is None or vk8s["metadata"].get("deletionTimestamp"):
            return None
        uid: str = vk8s["metadata"]["uid"]
        return uid

    async def _apply(self, record: logic.ClusterRecord) -> None:
        current = await self._kube.statefulsets(record.platform_namespace)
        await self._kube.execute(logic.plan(record, current, self._settings))


ROLLOUT_TRACKER = Publishes.of("the rollout tracker", ClusterVNodesReady, ClusterPaused, ClusterFailed)
TOPOLOGY = declare(
    logic.STAGE, VNodeHandlers, publishers=(ROLLOUT_TRACKER,), kv_bucket=VNodeSettings.model_fields["kv_bucket"].default
)

"""The vnode stage's events and a faked host cluster, for its handler and rollout tracker tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from libs.events import Envelope
from libs.events.catalog import (
    ClusterAccepted,
    ClusterDeleteRequested,
    ClusterIPsAllocated,
    ClusterUpdated,
    VNodePlacement,
)
from libs.kube.vnodes import platform_namespace
from services.vnode import logic
from services.vnode.adapters.store import RecordStore
from services.vnode.handlers import VNodeHandlers
from tests.support.events import spec_document
from tests.unit.vnode.factories import AT, UID

CLUSTER_ID = "ml/team-a"
PLATFORM_NAMESPACE = platform_namespace("ml", "team-a")
SPEC_DOCUMENT = spec_document(gpus=2, workers=1)


@dataclass
class FakeHost:
    """The host cluster as the handlers see it: a configured Vk8s object, the plans applied."""

    vk8s: dict[str, Any] | None = None
    remaining: list[str] = field(default_factory=list)
    executed: list[logic.Plan] = field(default_factory=list)
    deletes: list[tuple[str, str, bool]] = field(default_factory=list)
    retained: list[tuple[str, str]] = field(default_factory=list)

    async def read_vk8s(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.vk8s

    async def statefulsets(self, namespace: str) -> list[logic.CurrentStatefulSet]:
        return []

    async def execute(self, plan: logic.Plan) -> None:
        self.executed.append(plan)

    async def delete_cluster(self, namespace: str, uid: str, *, retain_volumes: bool) -> list[str]:
        self.deletes.append((namespace, uid, retain_volumes))
        return self.remaining

    async def mark_volumes_retained(self, namespace: str, uid: str) -> None:
        self.retained.append((namespace, uid))


@dataclass
class FakeRollouts:
    kicked: list[str] = field(default_factory=list)

    def kick(self, cluster_id: str) -> None:
        self.kicked.append(cluster_id)


def live_vk8s(*, deleting: bool = False, uid: str = UID, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "team-a",
        "namespace": "ml",
        "uid": uid,
        "generation": 1,
        "creationTimestamp": AT.isoformat(),
        "labels": {"team": "vision"},
        "annotations": annotations or {},
    }
    if deleting:
        metadata["deletionTimestamp"] = AT.isoformat()
    return {"metadata": metadata, "spec": SPEC_DOCUMENT}


def accepted(annotations: dict[str, str] | None = None) -> Envelope[ClusterAccepted]:
    fields = {"name": "team-a", "namespace": "ml", "spec": SPEC_DOCUMENT, "uid": UID, "generation": 1}
    data = ClusterAccepted.model_validate({**fields, "labels": {"team": "vision"}, "annotations": annotations or {}})
    return Envelope.new(data, cluster_id=CLUSTER_ID, now=AT)


def paused() -> Envelope[ClusterUpdated]:
    data = ClusterUpdated.model_validate(
        {"name": "team-a", "namespace": "ml", "spec": SPEC_DOCUMENT, "uid": UID, "generation": 1, "paused": True}
    )
    return Envelope.new(data, cluster_id=CLUSTER_ID, now=AT)


def allocated(uid: str | None = None) -> Envelope[ClusterIPsAllocated]:
    """`uid` None: as the ipmanager published it before allocations named their object."""
    data = ClusterIPsAllocated(
        generation=1,
        uid=uid,
        vnode_ips={"master": "10.200.0.2", "worker-0": "10.200.0.3"},
        pod_cidr="90.244.0.0/16",
        service_cidr="90.96.0.0/12",
        placements=[
            VNodePlacement(vnode="master", role="master", host_node="gpu-node-0", gpus=2),
            VNodePlacement(vnode="worker-0", role="worker", host_node="gpu-node-1", gpus=2),
        ],
    )
    return Envelope.new(data, cluster_id=CLUSTER_ID, now=AT)


def delete_requested() -> Envelope[ClusterDeleteRequested]:
    return Envelope.new(ClusterDeleteRequested(uid=UID), cluster_id=CLUSTER_ID, now=AT)


async def running(handlers: VNodeHandlers) -> None:
    """The cluster accepted and placed: its vNodes applied, scaled up."""
    await handlers.on_spec(accepted())
    await handlers.on_allocated(allocated())


async def recorded(store: RecordStore) -> logic.ClusterRecord:
    stored = await store.get(CLUSTER_ID)
    assert stored is not None
    return stored.record

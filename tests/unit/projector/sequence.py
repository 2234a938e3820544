"""Event sequences of one cluster for the projector's tests (every tier uses them)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from libs.api.models import Vk8sSpec
from libs.events import Envelope, Payload
from libs.events import catalog as ev
from tests.support.events import NOW, spec_document

UID = "0b6c3c1e-6c52-4a3e-9d0e-5b7f0d1c2a11"


class Timeline:
    """Builds envelopes of one cluster, each a second after the previous one, with distinct ids."""

    def __init__(self, namespace: str = "default", name: str = "team-a", *, start: datetime = NOW, uid: str = UID):
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.cluster_id = f"{namespace}/{name}"
        self._time = start
        self._count = 0

    def event(self, payload: Payload, *, at: datetime | None = None) -> Envelope[Any]:
        self._count += 1
        self._time = at or self._time + timedelta(seconds=1)
        event_id = f"{self.name}-{self._count:03d}-{payload.subject}"
        return Envelope.new(payload, cluster_id=self.cluster_id, now=self._time, event_id=event_id)

    def spec(self, *, kubeflow: bool = True) -> dict[str, Any]:
        document = spec_document(gpus=1, workers=1)
        if not kubeflow:
            document.pop("kubeflow")
        return {"name": self.name, "namespace": self.namespace, "spec": Vk8sSpec.model_validate(document)}

    def requested(self) -> Envelope[Any]:
        return self.event(ev.ClusterRequested(**self.spec()))

    def accepted(self, generation: int = 1, *, kubeflow: bool = True) -> Envelope[Any]:
        return self.event(ev.ClusterAccepted(**self.spec(kubeflow=kubeflow), uid=self.uid, generation=generation))

    def updated(self, generation: int, *, paused: bool = False) -> Envelope[Any]:
        return self.event(ev.ClusterUpdated(**self.spec(), uid=self.uid, generation=generation, paused=paused))

    def placements(self) -> list[ev.VNodePlacement]:
        return [
            ev.VNodePlacement(vnode="master", role="master", host_node="gpu-node-1", gpus=1),
            ev.VNodePlacement(vnode="worker-0", role="worker", host_node="gpu-node-2", gpus=1),
        ]

    def unschedulable(self, generation: int = 1, reason: str = "needs 1 GPU, 0 free") -> Envelope[Any]:
        return self.event(
            ev.ClusterUnschedulable(
                generation=generation,
                message="no host node fits",
                vnodes=[ev.VNodeUnschedulable(vnode="worker-0", reason=reason)],
            )
        )

    def scheduled(self, generation: int = 1) -> Envelope[Any]:
        return self.event(ev.ClusterScheduled(generation=generation, placements=self.placements()))

    def ips_allocated(self, generation: int = 1) -> Envelope[Any]:
        return self.event(
            ev.ClusterIPsAllocated(
                generation=generation,
                vnode_ips={"master": "10.250.0.10", "worker-0": "10.250.0.11"},
                pod_cidr="90.244.0.0/16",
                service_cidr="90.96.0.0/12",
                placements=self.placements(),
            )
        )

    def vnodes_ready(self, generation: int = 1) -> Envelope[Any]:
        vnodes = [
            ev.VNodeRef(
                vnode="master", role="master", pod="master-0", host_node="gpu-node-1", ip="10.250.0.10", gpus=1
            ),
            ev.VNodeRef(
                vnode="worker-0", role="worker", pod="worker-0-0", host_node="gpu-node-2", ip="10.250.0.11", gpus=1
            ),
        ]
        return self.event(
            ev.ClusterVNodesReady(
                generation=generation, vnodes=vnodes, pod_cidr="90.244.0.0/16", service_cidr="90.96.0.0/12"
            )
        )

    def setup(
        self, vnode: str, step: str, status: ev.SetupStatus, generation: int = 1, message: str = ""
    ) -> Envelope[Any]:
        return self.event(
            ev.VNodeSetupProgressed(generation=generation, vnode=vnode, step=step, status=status, message=message)
        )

    def kubernetes_ready(self, generation: int = 1) -> Envelope[Any]:
        return self.event(
            ev.ClusterKubernetesReady(
                generation=generation,
                kubernetes_version="v1.29.4",
                kubeconfig_secret=f"{self.name}-kubeconfig",
                api_server="https://10.200.0.2:6443",
                nodes=["master", "worker-0"],
            )
        )

    def kubeflow_progress(self, ready: int, total: int = 30, generation: int = 1) -> Envelope[Any]:
        return self.event(
            ev.KubeflowProgressed(
                generation=generation, release="v1.9.0", step="apply-manifests", ready=ready, total=total
            )
        )

    def ready(
        self, generation: int = 1, release: str | None = "v1.9.0", unavailable: tuple[str, ...] = ()
    ) -> Envelope[Any]:
        return self.event(
            ev.ClusterReady(generation=generation, kubeflow_release=release, kubeflow_unavailable=list(unavailable))
        )

    def paused(self, generation: int = 1) -> Envelope[Any]:
        return self.event(ev.ClusterPaused(generation=generation))

    def failed(self, stage: str, message: str, generation: int | None = 1, reason: str = "StepFailed") -> Envelope[Any]:
        return self.event(
            ev.ClusterFailed(
                stage=stage, reason=reason, message=message, failed_event="cluster.vnodes.ready", generation=generation
            )
        )

    def rejected(self, *problems: str) -> Envelope[Any]:
        return self.event(ev.ClusterRejected(problems=list(problems)))

    def delete_requested(self) -> Envelope[Any]:
        return self.event(ev.ClusterDeleteRequested(uid=self.uid))

    def vnodes_deleted(self) -> Envelope[Any]:
        return self.event(ev.ClusterVNodesDeleted(uid=self.uid))

    def ips_released(self) -> Envelope[Any]:
        return self.event(ev.ClusterIPsReleased(uid=self.uid, released=["10.250.0.10", "10.250.0.11"]))

    def deleted(self) -> Envelope[Any]:
        return self.event(ev.ClusterDeleted(uid=self.uid))

    def happy_path(self) -> list[Envelope[Any]]:
        """requested -> ... -> ready, 14 events."""
        return [
            self.requested(),
            self.accepted(),
            self.scheduled(),
            self.ips_allocated(),
            self.vnodes_ready(),
            self.setup("master", "kubeadm-init", "Running"),
            self.setup("master", "kubeadm-init", "Success"),
            self.setup("worker-0", "kubeadm-join", "Running"),
            self.setup("worker-0", "kubeadm-join", "Success"),
            self.kubernetes_ready(),
            self.kubeflow_progress(10),
            self.kubeflow_progress(30),
            self.ready(),
        ]

"""One line per pipeline event, for people watching a cluster come up (pure: no I/O)."""

from __future__ import annotations

from typing import Any

from libs.events import Envelope
from libs.events import catalog as c

# Event type -> the stage a person would name.
STAGES = {
    c.ClusterRequested.subject: "Requested",
    c.ClusterAccepted.subject: "Accepted",
    c.ClusterRejected.subject: "Rejected",
    c.ClusterUpdated.subject: "Updated",
    c.ClusterScheduled.subject: "Scheduled",
    c.ClusterUnschedulable.subject: "Pending",
    c.ClusterIPsAllocated.subject: "IPs allocated",
    c.ClusterVNodesReady.subject: "vNodes running",
    c.VNodeSetupProgressed.subject: "Kubernetes setup",
    c.ClusterKubernetesReady.subject: "Kubernetes ready",
    c.KubeflowProgressed.subject: "Kubeflow",
    c.ClusterReady.subject: "Running",
    c.ClusterPaused.subject: "Paused",
    c.ClusterDeleteRequested.subject: "Deleting",
    c.ClusterVNodesDeleted.subject: "vNodes deleted",
    c.ClusterIPsReleased.subject: "IPs released",
    c.ClusterDeleted.subject: "Deleted",
    c.ClusterFailed.subject: "Failed",
}


def describe(event: Envelope[Any]) -> str:
    data = event.data
    stage = STAGES.get(event.type, event.type)
    match data:
        case c.ClusterScheduled():
            where = ", ".join(f"{p.vnode} -> {p.host_node} ({p.gpus} GPU)" for p in data.placements)
            return f"{stage}: {where}"
        case c.ClusterUnschedulable():
            reasons = "; ".join(f"{v.vnode}: {v.reason}" for v in data.vnodes)
            return f"{stage}: {data.message} ({reasons})"
        case c.ClusterIPsAllocated():
            ips = ", ".join(f"{vnode}={ip}" for vnode, ip in sorted(data.vnode_ips.items()))
            return f"{stage}: {ips}; pods {data.pod_cidr}, services {data.service_cidr}"
        case c.ClusterVNodesReady():
            return f"{stage}: " + ", ".join(f"{v.pod} on {v.host_node}" for v in data.vnodes)
        case c.VNodeSetupProgressed():
            detail = f" - {data.message}" if data.message else ""
            return f"{stage}: {data.vnode} {data.step} {data.status}{detail}"
        case c.ClusterKubernetesReady():
            return f"{stage}: {data.kubernetes_version}, nodes {', '.join(data.nodes)}"
        case c.KubeflowProgressed():
            return f"{stage} {data.release}: {data.step} ({data.ready}/{data.total}) {data.message}".rstrip()
        case c.ClusterReady():
            kubeflow = f" with Kubeflow {data.kubeflow_release}" if data.kubeflow_release else ""
            return f"{stage}{kubeflow}"
        case c.ClusterRejected():
            return f"{stage}: " + "; ".join(data.problems)
        case c.ClusterFailed():
            return f"{stage} in {data.stage}: {data.reason}: {data.message}"
    return stage


def outcome(event: Envelope[Any]) -> str | None:
    """'Running', 'Failed' or 'Deleted' when the event ends what a user waits for."""
    match event.data:
        case c.ClusterReady():
            return "Running"
        case c.ClusterFailed() | c.ClusterRejected():
            return "Failed"
        case c.ClusterDeleted():
            return "Deleted"
    return None

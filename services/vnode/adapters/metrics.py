"""Metrics of the vnode service, besides the event metrics every service has
(vk8s_vnode_messages_total, vk8s_vnode_message_handling_seconds, vk8s_vnode_redeliveries_total,
vk8s_vnode_events_published_total):

- vk8s_vnode_objects_applied_total{kind}: objects server-side applied (StatefulSet, Service, Deployment).
- vk8s_vnode_objects_deleted_total{kind}: objects deleted, PersistentVolumeClaims included.
- vk8s_vnode_pods_ready_seconds: from applying a cluster's allocation to all its vNode pods running.
- vk8s_vnode_vnodes{state}: vNode StatefulSets by state: running, starting, stopping, stopped.
- vk8s_vnode_rollout_timeouts_total{target}: waits for vNodes to run (ready) or stop (paused) given up.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

VNODE_STATES = ("running", "starting", "stopping", "stopped")


class VNodeMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.objects_applied = Counter(
            "vk8s_vnode_objects_applied_total", "Objects server-side applied, by kind.", ["kind"], registry=registry
        )
        self.objects_deleted = Counter(
            "vk8s_vnode_objects_deleted_total", "Objects deleted, by kind.", ["kind"], registry=registry
        )
        self.pods_ready = Histogram(
            "vk8s_vnode_pods_ready_seconds",
            "Time from applying a cluster's allocation to all its vNode pods running.",
            registry=registry,
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200),
        )
        self.vnodes = Gauge("vk8s_vnode_vnodes", "vNode StatefulSets, by state.", ["state"], registry=registry)
        self.rollout_timeouts = Counter(
            "vk8s_vnode_rollout_timeouts_total",
            "Waits for vNodes to run (ready) or stop (paused) that were given up.",
            ["target"],
            registry=registry,
        )

    def count_vnodes(self, states: Iterable[str]) -> None:
        counts = dict.fromkeys(VNODE_STATES, 0)
        for state in states:
            counts[state] += 1
        for state, count in counts.items():
            self.vnodes.labels(state).set(count)

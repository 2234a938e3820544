"""Gateway metrics, beside the event metrics every service has (vk8s_gateway_messages_total, ...):

- vk8s_gateway_objects_observed_total{event}: watch events, by type (SYNC, ADDED, MODIFIED, DELETED)
- vk8s_gateway_requests_total{source,outcome}: cluster.requested handled; source `kubernetes`
  (built from a Vk8s object) or `nats` (sent by a user); outcome accepted, already_accepted,
  rejected or dropped
- vk8s_gateway_objects_rejected_total: object generations the watch rejected without a request
- vk8s_gateway_resync_published_total{event}: events published while catching up after a
  (re)list: objects changed, created or deleted while no watch was running
- vk8s_gateway_finalizer_changes_total{change}: the cleanup finalizer `added` or `removed`
- vk8s_gateway_plain_passwords_total: plain Kubeflow passwords moved into a Secret
- vk8s_gateway_reconcile_errors_total: failed tries at handling a watch event (each is retried)
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Counter

from libs.events import start_at_zero
from libs.kube.watch import EventType
from services.gateway.logic import REQUEST_SOURCES, Verdict

FINALIZER_CHANGES = ("added", "removed")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.objects_observed = Counter(
            "vk8s_gateway_objects_observed_total", "Vk8s watch events, by type.", ["event"], registry=registry
        )
        self.requests = Counter(
            "vk8s_gateway_requests_total",
            "cluster.requested handled, by source (kubernetes, nats) and outcome.",
            ["source", "outcome"],
            registry=registry,
        )
        self.objects_rejected = Counter(
            "vk8s_gateway_objects_rejected_total",
            "Vk8s object generations rejected by the watch (the spec cannot be provisioned).",
            registry=registry,
        )
        self.resync_published = Counter(
            "vk8s_gateway_resync_published_total",
            "Events published while catching up after a (re)list, by event type.",
            ["event"],
            registry=registry,
        )
        self.finalizer_changes = Counter(
            "vk8s_gateway_finalizer_changes_total",
            "Cleanup finalizer added to or removed from Vk8s objects.",
            ["change"],
            registry=registry,
        )
        self.plain_passwords = Counter(
            "vk8s_gateway_plain_passwords_total",
            "Plain Kubeflow passwords moved from a Vk8s spec into a Secret.",
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "vk8s_gateway_reconcile_errors_total",
            "Failed tries at handling a Vk8s watch event; each is retried.",
            registry=registry,
        )
        start_at_zero(self.objects_observed, event=get_args(EventType))
        start_at_zero(self.requests, source=REQUEST_SOURCES, outcome=(verdict.value for verdict in Verdict))
        start_at_zero(self.finalizer_changes, change=FINALIZER_CHANGES)

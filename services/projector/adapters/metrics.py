"""The projector's metrics, what the dashboards use (besides the consumer's vk8s_projector_messages_total etc.):

- vk8s_projector_clusters{phase}: gauge, clusters in the read model by status phase
  (every replica reports all clusters: aggregate with max, not sum);
- vk8s_projector_time_to_running_seconds: histogram, cluster.accepted -> cluster.ready, from event times;
- vk8s_projector_stage_duration_seconds{stage}: histogram, time between consecutive stage events;
  stage = admission, scheduling, ip_allocation, vnodes, kubernetes, kubeflow, pausing, deletion;
- vk8s_projector_failures_total{stage,reason}: counter, cluster.failed (and cluster.rejected, as
  stage="gateway", reason="Rejected") events, each counted once; at 0 from start for each stage's
  known reasons (libs.events.reasons.STAGE_FAILURES);
- vk8s_projector_kv_conflicts_total: counter, read-model writes retried because another writer won;
- vk8s_projector_status_writes_total{outcome}: counter, status patches: patched, missing (no object),
  refused (the apiserver rejected the status), repatched (a newer revision was written meanwhile).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from libs.api.models import Phase
from libs.events import Envelope, start_at_zero
from libs.events.reasons import ANY_STAGE_FAILURES, STAGE_FAILURES
from services.projector.adapters.read_model import Change
from services.projector.adapters.status import Written
from services.projector.logic import FAILURES, REJECTION_FAILURE, STAGE_TIMINGS, fact_from

# Clusters take minutes to tens of minutes; single stages from under a second to many minutes.
REPATCHED = "repatched"  # a newer read-model revision was written while the status was patched
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class ProjectorMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.clusters = Gauge(
            "vk8s_projector_clusters", "Clusters in the read model, by phase.", ["phase"], registry=registry
        )
        self.time_to_running = Histogram(
            "vk8s_projector_time_to_running_seconds",
            "From cluster.accepted to cluster.ready, by event times.",
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.stage_duration = Histogram(
            "vk8s_projector_stage_duration_seconds",
            "Time between consecutive stage events of a cluster, by stage.",
            ["stage"],
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.failures = Counter(
            "vk8s_projector_failures_total", "Cluster failures, by stage and reason.", ["stage", "reason"],
            registry=registry,
        )
        self.kv_conflicts = Counter(
            "vk8s_projector_kv_conflicts_total", "Read-model writes retried after a compare-and-set conflict.",
            registry=registry,
        )
        self.status_writes = Counter(
            "vk8s_projector_status_writes_total", "Status patches, by outcome.", ["outcome"], registry=registry
        )
        start_at_zero(self.stage_duration, stage=(label for label, _, _ in STAGE_TIMINGS))
        start_at_zero(self.failures, stage=[REJECTION_FAILURE[0]], reason=[REJECTION_FAILURE[1]])
        for stage, reasons in STAGE_FAILURES.items():
            start_at_zero(self.failures, stage=[stage], reason=[*ANY_STAGE_FAILURES, *reasons])
        start_at_zero(self.status_writes, outcome=[*(written.value for written in Written), REPATCHED])

    def set_phases(self, phases: dict[str, str]) -> None:
        counts = {phase.value: 0 for phase in Phase}
        for phase in phases.values():
            if phase:
                counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            self.clusters.labels(phase).set(count)

    def observe(self, change: Change, envelope: Envelope[Any]) -> None:
        """Observes what applying `envelope` newly made known; a redelivered event observes nothing."""
        if not change.applied:
            return
        known = change.before.timings if change.before is not None else {}
        for key, timing in change.after.timings.items():
            if key in known:
                continue
            if timing.stage == "running":
                self.time_to_running.observe(timing.seconds)
            else:
                self.stage_duration.labels(timing.stage).observe(timing.seconds)
        fact = fact_from(envelope)
        if fact.kind in FAILURES:
            self.failures.labels(fact.step or "", fact.reason or "").inc()

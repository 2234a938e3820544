"""Every labelled series a dashboard or alert reads is exported at 0 before its first event, so
rate()/increase() see that event (a series born at 1 has no earlier sample to rise from)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from libs.events import REGISTRY, EventMetrics, start_at_zero
from libs.events.metrics import OUTCOMES
from services.gateway.adapters.metrics import GatewayMetrics
from services.kubeflow.adapters.metrics import KubeflowMetrics
from services.projector.adapters.metrics import ProjectorMetrics
from services.scheduler.adapters.metrics import SchedulerMetrics


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_start_at_zero_creates_every_combination_at_zero() -> None:
    registry = CollectorRegistry()
    counter = Counter("things_total", "Things.", ["kind", "outcome"], registry=registry)
    start_at_zero(counter, kind=("a", "b"), outcome=iter(("ok", "error")))
    for kind in ("a", "b"):
        for outcome in ("ok", "error"):
            assert value(registry, "things_total", kind=kind, outcome=outcome) == 0.0
    assert value(registry, "things_total", kind="c", outcome="ok") is None


def test_event_metrics_start_at_zero_for_handled_and_published_subjects() -> None:
    registry = CollectorRegistry()
    metrics = EventMetrics("svc", registry)
    metrics.start_at_zero(handled=["cluster.accepted"], published=REGISTRY.subjects())
    for outcome in OUTCOMES:
        assert value(registry, "vk8s_svc_messages_total", subject="cluster.accepted", outcome=outcome) == 0.0
        assert value(registry, "vk8s_svc_message_handling_seconds_count", subject="cluster.accepted", outcome=outcome) == 0.0
    assert value(registry, "vk8s_svc_redeliveries_total", subject="cluster.accepted") == 0.0
    assert value(registry, "vk8s_svc_messages_total", subject="cluster.ready", outcome="ack") is None
    for subject in REGISTRY.subjects():
        assert value(registry, "vk8s_svc_events_published_total", subject=subject, duplicate="false") == 0.0


def test_service_metrics_start_at_zero_for_their_known_label_values() -> None:
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    ProjectorMetrics(registry)
    SchedulerMetrics(registry)
    KubeflowMetrics(registry, ["v1.3.1"])
    assert value(registry, "vk8s_gateway_requests_total", source="nats", outcome="rejected") == 0.0
    assert value(registry, "vk8s_gateway_objects_observed_total", event="ADDED") == 0.0
    assert value(registry, "vk8s_gateway_finalizer_changes_total", change="removed") == 0.0
    assert value(registry, "vk8s_projector_stage_duration_seconds_count", stage="kubernetes") == 0.0
    assert value(registry, "vk8s_projector_failures_total", stage="gateway", reason="Rejected") == 0.0
    assert value(registry, "vk8s_projector_failures_total", stage="bootstrap", reason="StepFailed") == 0.0
    assert value(registry, "vk8s_projector_failures_total", stage="scheduler", reason="RetriesExhausted") == 0.0
    assert value(registry, "vk8s_projector_status_writes_total", outcome="refused") == 0.0
    assert value(registry, "vk8s_projector_status_writes_total", outcome="repatched") == 0.0
    assert value(registry, "vk8s_scheduler_unschedulable_total", reason="InsufficientGpus") == 0.0
    assert value(registry, "vk8s_scheduler_ledger_conflicts_total", key="nodes") == 0.0
    assert value(registry, "vk8s_kubeflow_install_seconds_count", release="v1.3.1") == 0.0
    assert value(registry, "vk8s_kubeflow_installs_total", release="v1.3.1") == 0.0

"""The PromQL scanner finds exactly the metric names of an expression, and reads /metrics bodies right."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tests.unit.deploy.referenced_metrics import exposition_names, metric_names


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("up", {"up"}),
        ('sum by (subject) (rate(vk8s_gateway_messages_total{outcome="term"}[5m]))', {"vk8s_gateway_messages_total"}),
        (
            "histogram_quantile(0.95, sum by (le, stage) (rate(vk8s_projector_stage_seconds_bucket[$__rate_interval])))",
            {"vk8s_projector_stage_seconds_bucket"},
        ),
        ("sum(a_total) / ignoring(x) group_left sum(b_total) > bool 0.5 offset 1h", {"a_total", "b_total"}),
        ('label_replace(foo, "dst", "$1", "src", "(.*)") or vector(0)', {"foo"}),
        ('max without (instance) (up{app_kubernetes_io_component=~"$service"}) == 0', {"up"}),
        (
            'sum({__name__=~"(nats|jetstream)_consumer_num_pending", consumer_name=~"vk8s.*"})',
            {"nats_consumer_num_pending", "jetstream_consumer_num_pending"},
        ),
        ("count(count by (node) (x)) + topk(3, y) * 1e3 - 2", {"x", "y"}),
        ("time() - vk8s:cluster:started_seconds", {"vk8s:cluster:started_seconds"}),
    ],
)
def test_metric_names(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


def test_exposition_names_include_families_without_samples() -> None:
    registry = CollectorRegistry()
    Counter("demo_events_total", "events", ["subject"], registry=registry)
    Histogram("demo_seconds", "durations", ["stage"], registry=registry)
    Gauge("demo_gpus", "gpus", registry=registry)
    names = exposition_names(generate_latest(registry).decode())
    assert {"demo_events_total", "demo_seconds_bucket", "demo_seconds_sum", "demo_seconds_count", "demo_gpus"} <= names

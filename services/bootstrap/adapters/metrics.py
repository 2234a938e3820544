"""Metrics of the bootstrap stage:

- vk8s_bootstrap_steps_total{step,status}: step outcomes (Running, Success, Failed)
- vk8s_bootstrap_seconds: histogram of whole-cluster bootstrap durations
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram

from libs.events import start_at_zero
from libs.events.catalog import SetupStatus
from services.bootstrap.logic import METRIC_STEPS


class BootstrapMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.steps = Counter(
            "vk8s_bootstrap_steps_total", "Bootstrap step outcomes, by step and status.", ["step", "status"], registry=registry
        )
        self.bootstrap_seconds = Histogram(
            "vk8s_bootstrap_seconds",
            "Time to bootstrap a cluster's Kubernetes over exec.",
            registry=registry,
            buckets=(5, 15, 30, 60, 120, 300, 600, 1200),
        )
        start_at_zero(self.steps, step=METRIC_STEPS, status=get_args(SetupStatus))

"""Metrics of the kubeflow stage:

- vk8s_kubeflow_install_seconds{release}: histogram of install durations (apply to ready)
- vk8s_kubeflow_installs_total{release}: completed installs
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

from libs.events import start_at_zero


class KubeflowMetrics:
    def __init__(self, registry: CollectorRegistry, releases: Iterable[str]):
        self.install_seconds = Histogram(
            "vk8s_kubeflow_install_seconds",
            "Time to install Kubeflow into a virtual cluster until its core is available.",
            ["release"],
            registry=registry,
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
        )
        self.installs = Counter(
            "vk8s_kubeflow_installs_total", "Completed Kubeflow installs.", ["release"], registry=registry
        )
        releases = tuple(releases)
        start_at_zero(self.install_seconds, release=releases)
        start_at_zero(self.installs, release=releases)

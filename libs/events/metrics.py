"""Per-service event metrics, named `vk8s_<service>_...`."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

OUTCOMES = ("ack", "nak", "term", "invalid")
DUPLICATE = ("true", "false")


def start_at_zero(metric: MetricWrapperBase, **label_values: Iterable[str]) -> None:
    """Creates the series of every combination of the known label values, at 0.

    A labelled counter or histogram series otherwise appears with its first increment, and
    rate()/increase() need a sample before it: a panel or alert would miss the first event.
    """
    names = tuple(label_values)
    for values in itertools.product(*(tuple(label_values[name]) for name in names)):
        metric.labels(**dict(zip(names, values, strict=True)))


class EventMetrics:
    def __init__(self, service: str, registry: CollectorRegistry):
        prefix = f"vk8s_{service}"
        self.messages = Counter(
            f"{prefix}_messages_total",
            "Messages handled, by subject and outcome (ack, nak, term, invalid).",
            ["subject", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{prefix}_message_handling_seconds",
            "Time from receiving a message to settling it, by subject and outcome.",
            ["subject", "outcome"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300),
        )
        self.redeliveries = Counter(
            f"{prefix}_redeliveries_total",
            "Messages received more than once, by subject.",
            ["subject"],
            registry=registry,
        )
        self.published_events = Counter(
            f"{prefix}_events_published_total",
            "Events published, by subject; duplicates are those the broker dropped by Nats-Msg-Id.",
            ["subject", "duplicate"],
            registry=registry,
        )

        self.consumer_pending = Gauge(
            f"{prefix}_consumer_pending_messages",
            "Messages in the stream not yet delivered to this service's durable consumer (its lag).",
            ["consumer"],
            registry=registry,
        )
        self.consumer_ack_pending = Gauge(
            f"{prefix}_consumer_ack_pending_messages",
            "Messages delivered to this service's consumer and not yet acknowledged.",
            ["consumer"],
            registry=registry,
        )

    def start_at_zero(self, *, handled: Iterable[str], published: Iterable[str]) -> None:
        """Series at 0 for the subjects this service handles and those it may publish."""
        handled = tuple(handled)
        start_at_zero(self.messages, subject=handled, outcome=OUTCOMES)
        start_at_zero(self.duration, subject=handled, outcome=OUTCOMES)
        start_at_zero(self.redeliveries, subject=handled)
        start_at_zero(self.published_events, subject=published, duplicate=DUPLICATE)

    def settled(self, subject: str, outcome: str, seconds: float) -> None:
        self.messages.labels(subject, outcome).inc()
        self.duration.labels(subject, outcome).observe(seconds)

    def published(self, subject: str, *, duplicate: bool) -> None:
        self.published_events.labels(subject, "true" if duplicate else "false").inc()

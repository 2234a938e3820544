"""Scheduler metrics, on the service's registry. Dashboards use these names:

    vk8s_scheduler_gpus{model,node,zone,state}     gauge    GPUs of each GPU host node; state is
                                                            capacity (allocatable), in_use (requested
                                                            by pods), reserved (booked for vNodes whose
                                                            pod does not exist yet, held by their
                                                            placeholder pods) or free
    vk8s_scheduler_nodes{state}                    gauge    host nodes: schedulable | cordoned
    vk8s_scheduler_placement_seconds               histogram  time of one placement decision
    vk8s_scheduler_scheduled_total{trigger}        counter  clusters placed: event | retry
    vk8s_scheduler_unschedulable_total{reason}     counter  vNodes that did not fit, by reason
                                                            (InsufficientGpus, GpuModelUnavailable, ...),
                                                            counted when a cluster's reason changes
    vk8s_scheduler_pending_clusters                gauge    clusters waiting for capacity
    vk8s_scheduler_reservations{state}             gauge    reservations: held | confirmed | paused
    vk8s_scheduler_ledger_conflicts_total{key}     counter  compare-and-set writes that lost to another
                                                            writer, by key kind: clusters | nodes
    vk8s_scheduler_lost_races_total                counter  placements re-done because another request
                                                            took the capacity first
    vk8s_scheduler_reservations_expired_total      counter  holds released because no cluster.vnodes.ready came
    vk8s_scheduler_bookings_repaired_total         counter  node bookings the sweep put back in line with
                                                            their reservation (after a crash)

Gauges are read from the inventory and the ledger cache at scrape time, so they cost nothing
between scrapes.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from libs.events import start_at_zero
from services.scheduler.adapters.ledger import KEY_KINDS, Ledger
from services.scheduler.logic import UNSCHEDULABLE_REASONS, Inventory, ReservationState

PREFIX = "vk8s_scheduler"


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.placement_seconds = Histogram(
            f"{PREFIX}_placement_seconds",
            "Time of one placement decision (the pure search, not the ledger writes).",
            registry=registry,
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
        )
        self.scheduled = Counter(
            f"{PREFIX}_scheduled_total", "Clusters placed, by what triggered it (event | retry).", ["trigger"],
            registry=registry,
        )
        self.unschedulable = Counter(
            f"{PREFIX}_unschedulable_total", "vNodes that did not fit, by reason.", ["reason"], registry=registry
        )
        self.ledger_conflicts = Counter(
            f"{PREFIX}_ledger_conflicts_total",
            "Compare-and-set writes to the ledger that lost to another writer, by key kind.",
            ["key"],
            registry=registry,
        )
        start_at_zero(self.unschedulable, reason=UNSCHEDULABLE_REASONS)
        start_at_zero(self.ledger_conflicts, key=KEY_KINDS)
        self.lost_races = Counter(
            f"{PREFIX}_lost_races_total",
            "Placements re-done because another request took the capacity first.",
            registry=registry,
        )
        self.expired = Counter(
            f"{PREFIX}_reservations_expired_total",
            "Held reservations released because the vNode stage never confirmed them.",
            registry=registry,
        )
        self.repaired = Counter(
            f"{PREFIX}_bookings_repaired_total",
            "Node bookings the sweep put back in line with their reservation.",
            registry=registry,
        )


class StateCollector(Collector):
    """The gauges, computed from the inventory and the ledger cache when scraped."""

    def __init__(self, inventory: Inventory, ledger: Ledger):
        self._inventory = inventory
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        gpus = GaugeMetricFamily(
            f"{PREFIX}_gpus",
            "GPUs of each host node by state: capacity, in_use (pods), reserved (booked, no vNode pod yet), free.",
            labels=["model", "node", "zone", "state"],
        )
        nodes = Tally({"schedulable": 0, "cordoned": 0})
        for node in self._inventory.nodes():
            nodes["cordoned" if node.cordoned else "schedulable"] += 1
            if not node.allocatable.gpus:
                continue
            labels = [node.gpu_model or "", node.name, node.zone or ""]
            free = self._inventory.free(node.name)
            gpus.add_metric([*labels, "capacity"], node.allocatable.gpus)
            gpus.add_metric([*labels, "in_use"], self._inventory.in_use(node.name).gpus)
            gpus.add_metric([*labels, "reserved"], self._inventory.reserved(node.name).gpus)
            gpus.add_metric([*labels, "free"], free.gpus if free is not None else 0)
        yield gpus

        by_node_state = GaugeMetricFamily(f"{PREFIX}_nodes", "Host nodes, schedulable or cordoned.", labels=["state"])
        for state, count in nodes.items():
            by_node_state.add_metric([state], count)
        yield by_node_state

        yield GaugeMetricFamily(
            f"{PREFIX}_pending_clusters", "Clusters waiting for capacity.", value=len(self._ledger.pending())
        )

        reservations = GaugeMetricFamily(f"{PREFIX}_reservations", "Reservations by state.", labels=["state"])
        states = Tally({state.value: 0 for state in ReservationState})
        states.update(r.state.value for r in self._ledger.reservations())
        for state, count in states.items():
            reservations.add_metric([state], count)
        yield reservations

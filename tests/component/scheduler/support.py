"""Scheduler replicas over a real JetStream KV ledger, with inventories set by hand (no API server)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.events import Envelope
from libs.events.catalog import ClusterAccepted, ClusterUpdated
from services.scheduler.adapters.clusters import WantedClusters
from services.scheduler.adapters.ledger import Ledger, decode_bookings, node_key
from services.scheduler.adapters.metrics import SchedulerMetrics
from services.scheduler.adapters.placeholders import Placeholders
from services.scheduler.logic import Booking, HostNode, Inventory
from services.scheduler.scheduler import ClusterAsk, Scheduler
from tests.unit.scheduler.support import node_spec, spec

BUCKET = "vk8s-scheduler-test"
START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Replica:
    inventory: Inventory
    ledger: Ledger
    scheduler: Scheduler
    metrics: SchedulerMetrics
    capacity_grew: asyncio.Event
    published: list[Envelope[Any]] = field(default_factory=list)

    async def publish(self, event: Envelope[Any]) -> None:
        self.published.append(event)


ReplicaFactory = Callable[..., Awaitable[Replica]]


@contextlib.asynccontextmanager
async def replicas(js: JetStreamContext, clock: Clock) -> AsyncIterator[ReplicaFactory]:
    watches: list[asyncio.Task[None]] = []

    async def start(
        *nodes: HostNode,
        hold_s: float = 600.0,
        head_protection_s: float = 600.0,
        placeholders: Placeholders | None = None,
        clusters: WantedClusters | None = None,
    ) -> Replica:
        inventory = Inventory()
        for node in nodes:
            inventory.upsert_node(node)
        metrics = SchedulerMetrics(CollectorRegistry())
        grew = asyncio.Event()
        ledger = await Ledger.open(
            js,
            BUCKET,
            inventory,
            on_growth=grew.set,
            on_conflict=lambda kind: metrics.ledger_conflicts.labels(kind).inc(),
        )
        watches.append(asyncio.create_task(ledger.watch()))
        await asyncio.wait_for(ledger.synced.wait(), 10)
        scheduler = Scheduler(
            inventory,
            ledger,
            metrics,
            synced=(ledger.synced,),
            capacity_grew=grew,
            hold_s=hold_s,
            head_protection_s=head_protection_s,
            commit_attempts=8,
            sync_timeout_s=5.0,
            clock=clock,
            placeholders=placeholders,
            clusters=clusters,
        )
        return Replica(inventory, ledger, scheduler, metrics, grew)

    try:
        yield start
    finally:
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)


def accepted(
    name: str, *workers: int, uid: str | None = None, generation: int = 1, placement: dict[str, Any] | None = None
) -> Envelope[ClusterAccepted]:
    """A cluster with a CPU-only master and one worker per GPU count given."""
    document = spec(
        node_spec("master", role="master", cpu="2", memory="4Gi"),
        *(node_spec(f"worker-{i}", gpus) for i, gpus in enumerate(workers)),
        placement=placement,
    )
    data = ClusterAccepted(name=name, namespace="team", spec=document, uid=uid or f"uid-{name}", generation=generation)
    return Envelope.new(data, cluster_id=f"team/{name}", now=START, event_id=f"accepted-{name}-{generation}")


def updated(
    event: Envelope[ClusterAccepted], *workers: int, generation: int, paused: bool = False, at: datetime = START
) -> Envelope[ClusterUpdated]:
    grown = accepted(event.data.name, *workers, uid=event.data.uid)
    data = ClusterUpdated(
        name=event.data.name,
        namespace="team",
        spec=grown.data.spec,
        uid=event.data.uid,
        generation=generation,
        paused=paused,
    )
    event_id = f"updated-{event.data.name}-{generation}"
    return Envelope.new(data, cluster_id=event.cluster_id, now=at, event_id=event_id)


def ask(event: Envelope[Any]) -> ClusterAsk:
    return ClusterAsk.from_event(event)


async def bookings_in_bucket(js: JetStreamContext, node: str) -> dict[tuple[str, str], Booking]:
    kv = await js.key_value(BUCKET)
    try:
        entry = await kv.get(node_key(node))
    except Exception:  # noqa: BLE001 - absent means nothing booked
        return {}
    return decode_bookings(entry.value)

"""The requesters' feed: each event the projector handles is relayed, on core NATS, on its cluster's
subject only, after its status was written."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from libs.events import REGISTRY, Envelope
from libs.events.catalog import FEED_SUBJECT, feed_event_type, feed_subject
from services.projector.adapters.feed import EventFeed
from services.projector.adapters.metrics import ProjectorMetrics
from services.projector.adapters.read_model import ClusterStore
from services.projector.adapters.status import Written
from services.projector.handlers import ProjectorHandlers
from tests.unit.projector.sequence import Timeline


class RecordingWriter:
    def __init__(self) -> None:
        self.written: list[str] = []

    async def write(self, namespace: str, name: str, status: dict[str, Any]) -> tuple[Written, str]:
        self.written.append(f"{namespace}/{name}")
        return Written.PATCHED, ""


async def test_each_handled_event_is_relayed_on_its_clusters_feed_subject(store: ClusterStore, nc: NATS) -> None:
    t = Timeline()
    events: list[Envelope[Any]] = [t.accepted(), t.scheduled()]
    namespace, name = events[0].cluster_id.split("/")
    own = await nc.subscribe(feed_subject(events[0].cluster_id))
    others = await nc.subscribe(f"{FEED_SUBJECT}.not-{namespace}.>")
    await nc.flush()
    writer = RecordingWriter()
    projector = ProjectorHandlers(store=store, writer=writer, feed=EventFeed(nc), metrics=ProjectorMetrics(CollectorRegistry()))
    for event in events:
        await projector.handle(event)
    relayed = [await own.next_msg(timeout=5) for _ in events]
    assert [msg.subject for msg in relayed] == [f"{FEED_SUBJECT}.{namespace}.{name}.{event.type}" for event in events]
    decoded = [REGISTRY.decode(feed_event_type(msg.subject), msg.data) for msg in relayed]
    assert decoded == events
    assert writer.written == [events[0].cluster_id] * 2
    assert others.pending_msgs == 0

"""The requesters' feed: each event the projector handled, relayed on core NATS on its cluster's subject
(`vk8s.feed.<namespace>.<name>.<type>`), which a requester may subscribe to for its namespaces only. It reads
no stream: the stream holds every tenant's events."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS

from libs.events import Envelope
from libs.events.catalog import feed_subject


class EventFeed:
    def __init__(self, nc: NATS):
        self._nc = nc

    async def relay(self, envelope: Envelope[Any]) -> None:
        """At most once per handling: a follower not subscribed then misses it; a redelivered event is
        relayed again (followers drop an id they have seen)."""
        await self._nc.publish(feed_subject(envelope.cluster_id, envelope.type), envelope.to_json())

"""The scheduler's subscriptions: each event in, the events it causes out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from libs.events import Envelope, Handler
from libs.events.catalog import (
    ClusterAccepted,
    ClusterDeleted,
    ClusterFailed,
    ClusterIPsReleased,
    ClusterPaused,
    ClusterUpdated,
    ClusterVNodesReady,
)
from services.scheduler.logic import Unschedulable, scheduled_event, unschedulable_event
from services.scheduler.scheduler import ClusterAsk, Outcome, Scheduled, Scheduler

Events = list[Envelope[Any]]


class Handlers:
    def __init__(self, scheduler: Scheduler, clock: Callable[[], datetime]):
        self._scheduler = scheduler
        self._clock = clock

    def subscriptions(self) -> dict[str, Handler]:
        return {
            ClusterAccepted.subject: self.accepted,
            ClusterUpdated.subject: self.updated,
            ClusterPaused.subject: self.paused,
            ClusterVNodesReady.subject: self.vnodes_ready,
            ClusterFailed.subject: self.failed,
            ClusterIPsReleased.subject: self.ips_released,
        }

    async def accepted(self, event: Envelope[ClusterAccepted]) -> Events:
        return self._answer(event, await self._scheduler.schedule(ClusterAsk.from_event(event)))

    async def updated(self, event: Envelope[ClusterUpdated]) -> Events:
        if event.data.paused:
            # The vNode stage scales the cluster down and publishes cluster.paused, which releases
            # the GPUs; all that goes here is a wait for capacity the cluster no longer needs.
            await self._scheduler.forget_unplaced(event.cluster_id, event.data.generation)
            return []
        # New vNodes are placed, unchanged ones keep their place (scale-out).
        return self._answer(event, await self._scheduler.schedule(ClusterAsk.from_event(event)))

    async def paused(self, event: Envelope[ClusterPaused]) -> Events:
        await self._scheduler.pause(event.cluster_id, event.data.generation, event.time)
        return []

    async def vnodes_ready(self, event: Envelope[ClusterVNodesReady]) -> Events:
        await self._scheduler.confirm(event.cluster_id, event.data.generation, [v.vnode for v in event.data.vnodes])
        return []

    async def failed(self, event: Envelope[ClusterFailed]) -> Events:
        await self._scheduler.fail(event.cluster_id, event.data.generation, event.time)
        return []

    async def ips_released(self, event: Envelope[ClusterIPsReleased]) -> Events:
        await self._scheduler.release(event.cluster_id, event.data.uid)
        return [event.follow(ClusterDeleted(uid=event.data.uid), now=self._clock())]

    def _answer(self, event: Envelope[ClusterAccepted] | Envelope[ClusterUpdated], outcome: Outcome) -> Events:
        now = self._clock()
        if isinstance(outcome, Scheduled):
            return [scheduled_event(event, outcome.reservation, now)]
        if isinstance(outcome, Unschedulable):
            return [unschedulable_event(event, event.data.generation, outcome, now)]
        return []

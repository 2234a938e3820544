"""The scheduler's subscriptions: each event in, the events it causes out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from libs.events import Envelope, Publishes, declare, subscriber
from libs.events.catalog import (
    ClusterAccepted,
    ClusterDeleted,
    ClusterFailed,
    ClusterIPsReleased,
    ClusterPaused,
    ClusterScheduled,
    ClusterUnschedulable,
    ClusterUpdated,
    ClusterVNodesReady,
)
from services.scheduler.logic import Unschedulable, scheduled_event, unschedulable_event
from services.scheduler.scheduler import ClusterAsk, Outcome, Scheduled, Scheduler
from services.scheduler.settings import SchedulerSettings

Events = list[Envelope[Any]]


class SchedulerHandlers:
    def __init__(self, *, scheduler: Scheduler, clock: Callable[[], datetime]):
        self._scheduler = scheduler
        self._clock = clock

    @subscriber(ClusterAccepted, emits=(ClusterScheduled, ClusterUnschedulable))
    async def accepted(self, event: Envelope[ClusterAccepted]) -> Events:
        return self._answer(event, await self._scheduler.schedule(ClusterAsk.from_event(event)))

    @subscriber(ClusterUpdated, emits=(ClusterScheduled, ClusterUnschedulable))
    async def updated(self, event: Envelope[ClusterUpdated]) -> Events:
        if event.data.paused:
            # The vNode stage scales the cluster down and publishes cluster.paused, which releases
            # the GPUs; all that goes here is a wait for capacity the cluster no longer needs.
            await self._scheduler.forget_unplaced(event.cluster_id, event.data.generation)
            return []
        # New vNodes are placed, unchanged ones keep their place (scale-out).
        return self._answer(event, await self._scheduler.schedule(ClusterAsk.from_event(event)))

    @subscriber(ClusterPaused)
    async def paused(self, event: Envelope[ClusterPaused]) -> Events:
        await self._scheduler.pause(event.cluster_id, event.data.generation, event.time, event.data.asked_at)
        return []

    @subscriber(ClusterVNodesReady)
    async def vnodes_ready(self, event: Envelope[ClusterVNodesReady]) -> Events:
        await self._scheduler.confirm(event.cluster_id, event.data.generation, [v.vnode for v in event.data.vnodes])
        return []

    @subscriber(ClusterFailed)
    async def failed(self, event: Envelope[ClusterFailed]) -> Events:
        await self._scheduler.fail(event.cluster_id, event.data.generation, event.time)
        return []

    @subscriber(ClusterIPsReleased, emits=(ClusterDeleted,))
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


RETRIES = Publishes.of("the retry of pending clusters", ClusterScheduled, ClusterUnschedulable)
TOPOLOGY = declare(
    "scheduler", SchedulerHandlers, publishers=(RETRIES,), kv_bucket=SchedulerSettings.model_fields["kv_bucket"].default
)

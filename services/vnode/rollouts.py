"""Answers what a cluster record awaits once the host cluster shows it: cluster.vnodes.ready when
every placed vNode pod runs, cluster.paused when all are stopped, cluster.failed when that takes
longer than `ready_timeout_s`.

Handlers only record the wait and return, so a slow image pull never holds a message (or the
messages behind it). The StatefulSets are watched into a cache; a cluster is evaluated when one of
its StatefulSets changes, when a handler kicks it, and every `resync_interval_s` (which also finds
waits left by a previous process and enforces the deadline). Published ids derive from the awaited
cause, so evaluating twice publishes a duplicate the broker drops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from libs.events import Envelope, Publisher, TransientError
from libs.events.catalog import ClusterVNodesReady
from libs.kube import WatchEvent, watch_objects
from services.vnode import logic
from services.vnode.adapters.kube import VNODE_SELECTOR, WatchedObjects
from services.vnode.adapters.metrics import VNodeMetrics
from services.vnode.adapters.store import RecordStore
from services.vnode.settings import VNodeSettings

log = structlog.get_logger(__name__)

class RolloutTracker:
    def __init__(
        self,
        *,
        kube: WatchedObjects,
        store: RecordStore,
        publisher: Publisher,
        metrics: VNodeMetrics,
        settings: VNodeSettings,
        clock: Callable[[], datetime],
    ):
        self._kube = kube
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._rollouts: dict[tuple[str, str], logic.VNodeRollout] = {}
        self._listed: set[tuple[str, str]] = set()
        self._synced = False
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def kick(self, cluster_id: str) -> None:
        """Evaluates the cluster soon (a handler just recorded a wait)."""
        self._dirty.add(cluster_id)
        self._wake.set()

    async def watch(self) -> None:
        async for event in watch_objects(self._kube.list_vnode_statefulsets, label_selector=VNODE_SELECTOR):
            _stop_if_cancelled()
            self.observe(event)

    def observe(self, event: WatchEvent) -> None:
        if event.object is not None:
            key = (event.object.metadata.namespace, event.object.metadata.name)
            rollout = self._kube.rollout(event.object)
            if event.type == "DELETED" or rollout is None:
                self._rollouts.pop(key, None)
            else:
                self._rollouts[key] = rollout
            if event.type == "SYNC":
                self._listed.add(key)
            if rollout is not None:
                self.kick(f"{rollout.tenant_namespace}/{rollout.cluster}")
        if event.synced:
            # A (re)list is complete: what it did not show was deleted while the watch was down.
            for key in set(self._rollouts) - self._listed:
                del self._rollouts[key]
            self._listed.clear()
            self._synced = True
            self._wake.set()
        self._metrics.count_vnodes(rollout.state for rollout in self._rollouts.values())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_resync = loop.time()
        while True:
            _stop_if_cancelled()
            # asyncio.timeout, not wait_for: wait_for of Python 3.11 can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_resync):
                    await self._wake.wait()
            self._wake.clear()
            if not self._synced:
                continue  # the cache would call every vNode missing
            cluster_ids, self._dirty = self._dirty, set()
            if loop.time() >= next_resync:
                cluster_ids |= set(await self._store.cluster_ids())
                next_resync = loop.time() + self._settings.resync_interval_s
            for cluster_id in sorted(cluster_ids):
                try:
                    await self.evaluate(cluster_id)
                except TransientError as error:
                    log.info("Evaluating rollout deferred", cluster_id=cluster_id, reason=str(error))
                except Exception:  # one cluster's trouble must not stall the others
                    log.exception("Evaluating rollout failed; retrying at the next resync", cluster_id=cluster_id)

    async def evaluate(self, cluster_id: str) -> None:
        stored = await self._store.get(cluster_id)
        if stored is None or stored.record.awaiting is None:
            return
        record, awaiting = stored.record, stored.record.awaiting
        rollouts = {
            rollout.vnode: rollout
            for rollout in self._rollouts.values()
            if rollout.namespace == record.platform_namespace and rollout.uid == record.uid
        }
        now = self._clock()
        outcome = logic.evaluate(record, rollouts, now, self._settings)
        if isinstance(outcome, logic.Waiting):
            return
        cause = awaiting.cause_envelope()
        event: Envelope[Any]
        if isinstance(outcome, logic.Reached):
            event = cause.follow(outcome.event, now=now)
            if isinstance(outcome.event, ClusterVNodesReady):
                self._metrics.pods_ready.observe((now - awaiting.since).total_seconds())
        else:
            problems = (
                await self._kube.pod_problems(record.platform_namespace, record.uid) if awaiting.target == "ready" else []
            )
            event = cause.follow(logic.rollout_failed(awaiting, outcome, problems), now=now)
            self._metrics.rollout_timeouts.labels(awaiting.target).inc()
        # Claimed before publishing, compare-and-set: a wait superseded meanwhile (a resume recorded
        # after this pause was read) is not answered; the newer one is evaluated next. Answering it
        # told the scheduler a resumed cluster was paused, and it freed the GPUs the cluster ran on.
        claimed = await self._store.save(record.model_copy(update={"awaiting": None}), stored.revision)
        try:
            await self._publisher.publish(event)
        except BaseException:
            with contextlib.suppress(TransientError):  # a newer wait replaced it meanwhile
                await self._store.save(record, claimed)
            raise
        log.info("Published rollout outcome", cluster_id=cluster_id, event_type=event.type, event_id=event.id)


def _stop_if_cancelled() -> None:
    """Ends a loop whose cancellation was swallowed: nats-py awaits through asyncio.wait_for, which
    on Python 3.11 can drop a cancel arriving as its result does; the task still counts it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError

"""The one handler: every cluster event -> read model (KV, compare-and-set) -> Vk8s status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from libs.events import EVENTS, UNKNOWN_CLUSTER_ID, Envelope, TransientError, declare, subscriber, utc_now
from services.projector.adapters.feed import EventFeed
from services.projector.adapters.metrics import REPATCHED, ProjectorMetrics
from services.projector.adapters.read_model import ClusterRecord, ClusterStore
from services.projector.adapters.status import StatusWrites, Written
from services.projector.settings import ProjectorSettings

log = structlog.get_logger(__name__)


class ProjectorHandlers:
    def __init__(
        self,
        *,
        store: ClusterStore,
        writer: StatusWrites,
        feed: EventFeed,
        metrics: ProjectorMetrics,
        confirm_attempts: int = 5,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._store = store
        self._writer = writer
        self._feed = feed
        self._metrics = metrics
        self._confirm_attempts = confirm_attempts
        self._clock = clock

    @subscriber(*EVENTS)
    async def handle(self, envelope: Envelope[Any]) -> Sequence[Envelope[Any]]:
        if envelope.cluster_id == UNKNOWN_CLUSTER_ID:
            log.info("Skipping event of no known cluster")
            return ()
        change = await self._store.apply(envelope)
        self._metrics.observe(change, envelope)
        # Written even when nothing changed: the last attempt may have failed after the KV write.
        await self._write_status(change.after, change.revision)
        await self._feed.relay(envelope)
        log.debug("Projected event", applied=change.applied, phase=change.after.status.get("phase"))
        return ()

    async def _write_status(self, record: ClusterRecord, revision: int) -> None:
        """Patches the status, then checks the record is still the newest: another projector may
        have written a newer one whose patch landed before ours, and then ours must not stay."""
        for _ in range(self._confirm_attempts):
            written, detail = await self._writer.write(record.namespace, record.name, record.status)
            self._metrics.status_writes.labels(written.value).inc()
            if written is Written.MISSING:
                return  # only the read model then
            if written is Written.REFUSED:
                log.error("Status refused by the apiserver; the read model has it", error=detail)
                return
            latest, latest_revision = await self._store.get(record.cluster_id)
            if latest is None or latest_revision == revision:
                return
            record, revision = latest, latest_revision
            self._metrics.status_writes.labels(REPATCHED).inc()
        # Our last patch may have landed after the newest one: only a later try can put it right.
        raise TransientError(f"status of {record.cluster_id} kept changing: {self._confirm_attempts} patches")


    async def remove_deleted_clusters(self, retention: timedelta, every_s: float) -> None:
        """Forever: drops the records of clusters deleted `retention` ago, so the read model (and
        its API and phase gauge) holds what exists and what just went, not every cluster ever made."""
        while True:
            try:
                if removed := await self._store.remove_expired(self._clock(), retention):
                    log.info("Removed records of deleted clusters", clusters=removed)
            except TransientError as error:
                log.warning("Removing records of deleted clusters failed; trying at the next sweep", error=str(error))
            await asyncio.sleep(every_s)


# It reads every subject to fold it into the status; the gateway alone answers bad requests.
TOPOLOGY = declare(
    "projector",
    ProjectorHandlers,
    kv_bucket=ProjectorSettings.model_fields["kv_bucket"].default,
    answers_invalid_requests=False,
    relays_feed=True,
)

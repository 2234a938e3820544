"""The read model in NATS KV: one key per cluster, written with compare-and-set.

Each value is a `ClusterRecord`: the fold's state plus the status rendered from it, so
readers (the HTTP API, dashboards, the status writer) never re-run the fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from libs.events import Envelope, TransientError
from services.projector.logic import ClusterState, Timing, apply, expired, render_status, timings


class ClusterSummary(BaseModel):
    """What the read API shows of a cluster: who it is and its status, not the fold's internals."""

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, frozen=True, extra="ignore")

    cluster_id: str
    namespace: str
    name: str
    status: dict[str, Any]


class ClusterRecord(ClusterSummary):
    model_config = ConfigDict(extra="forbid")

    timings: dict[str, Timing] = Field(description="Stage durations known so far, keyed to count each once.")
    state: ClusterState

    @classmethod
    def of(cls, state: ClusterState) -> ClusterRecord:
        return cls(
            cluster_id=state.cluster_id,
            namespace=state.namespace,
            name=state.name,
            status=render_status(state),
            timings=timings(state),
            state=state,
        )

    def summary(self) -> ClusterSummary:
        return ClusterSummary(cluster_id=self.cluster_id, namespace=self.namespace, name=self.name, status=self.status)


def key_of(cluster_id: str) -> str:
    """`<namespace>.<name>`: DNS labels hold no dots, and a namespace is then a `ns.*` filter."""
    namespace, name = cluster_id.split("/", 1)
    return f"{namespace}.{name}"


@dataclass(frozen=True)
class Change:
    """The outcome of applying one event: `applied` is False for a redelivery or a stale event."""

    before: ClusterRecord | None
    after: ClusterRecord
    revision: int
    applied: bool


class ClusterStore:
    def __init__(self, kv: KeyValue, *, attempts: int = 20, on_conflict: Callable[[], None] = lambda: None):
        self._kv = kv
        self._attempts = attempts
        self._on_conflict = on_conflict

    async def get(self, cluster_id: str) -> tuple[ClusterRecord | None, int]:
        """The record and its revision; (None, 0) when the cluster has none yet."""
        try:
            entry = await self._kv.get(key_of(cluster_id))
        except KeyNotFoundError:
            return None, 0
        except (nats.errors.Error, TimeoutError) as error:
            raise TransientError(f"reading the read model of {cluster_id}: {error!r}") from error
        assert entry.value is not None and entry.revision is not None
        return ClusterRecord.model_validate_json(entry.value), entry.revision

    async def apply(self, envelope: Envelope[Any]) -> Change:
        """Folds the event into its cluster's record: read, fold, write if the revision is still
        the one read; on a conflict (another projector wrote first) read again and retry."""
        key = key_of(envelope.cluster_id)
        for attempt in range(1, self._attempts + 1):
            before, revision = await self.get(envelope.cluster_id)
            state = apply(before.state if before is not None else None, envelope)
            if before is not None and state is before.state:
                return Change(before, before, revision, applied=False)
            after = ClusterRecord.of(state)
            value = after.model_dump_json(by_alias=True).encode()
            try:
                if revision:
                    revision = await self._kv.update(key, value, last=revision)
                else:
                    revision = await self._kv.create(key, value)
            except KeyWrongLastSequenceError:
                self._on_conflict()
                # Jitter, so two projectors racing on one cluster do not collide again in step.
                await asyncio.sleep(random.uniform(0, 0.005 * attempt))
                continue
            except (nats.errors.Error, TimeoutError) as error:
                raise TransientError(f"writing the read model of {envelope.cluster_id}: {error!r}") from error
            return Change(before, after, revision, applied=True)
        raise TransientError(f"read model of {envelope.cluster_id} kept changing: {self._attempts} write conflicts")

    async def remove_expired(self, now: datetime, retention: timedelta) -> list[str]:
        """Deletes the records of clusters deleted at least `retention` ago; a record written
        meanwhile (a new cluster of the same name) stays. Returns the cluster ids removed."""
        removed: list[str] = []
        try:
            keys = await self._kv.keys()
            for key in keys:
                try:
                    entry = await self._kv.get(key)
                except KeyNotFoundError:
                    continue
                assert entry.value is not None and entry.revision is not None
                record = ClusterRecord.model_validate_json(entry.value)
                if not expired(record.state, now, retention):
                    continue
                with contextlib.suppress(KeyWrongLastSequenceError):
                    await self._kv.delete(key, last=entry.revision)
                    removed.append(record.cluster_id)
        except NoKeysError:
            pass
        except (nats.errors.Error, TimeoutError) as error:
            raise TransientError(f"removing expired records: {error!r}") from error
        return removed


class ClusterView:
    """Every cluster's summary, kept current by a KV watch: serves the list endpoint and the
    clusters-by-phase gauge without a KV round trip per cluster (nor the fold's state in memory)."""

    def __init__(self, kv: KeyValue, on_change: Callable[[dict[str, str]], None] = lambda phases: None):
        self._kv = kv
        self._clusters: dict[str, ClusterSummary] = {}
        self._on_change = on_change
        self.synced = asyncio.Event()

    def __iter__(self) -> Iterator[ClusterSummary]:
        return iter(list(self._clusters.values()))

    def phases(self) -> dict[str, str]:
        return {key: str(cluster.status.get("phase", "")) for key, cluster in self._clusters.items()}

    async def run(self) -> None:
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the initial values are all in
                    self.synced.set()
                elif entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self._clusters.pop(entry.key, None)
                else:
                    self._clusters[entry.key] = ClusterSummary.model_validate_json(entry.value)
                if self.synced.is_set():
                    self._on_change(self.phases())
        finally:
            await watcher.stop()

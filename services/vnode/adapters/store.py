"""The cluster records of this stage in the NATS KV bucket `vk8s-vnode`, keyed by cluster id
(`<namespace>/<name>`), written compare-and-set so concurrent handlers cannot lose an update."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from libs.events import Reason, TransientError
from services.vnode.logic import ClusterRecord


@dataclass(frozen=True)
class Stored:
    record: ClusterRecord
    revision: int


class RecordStore:
    def __init__(self, kv: KeyValue):
        self._kv = kv

    async def get(self, cluster_id: str) -> Stored | None:
        try:
            entry = await self._kv.get(cluster_id)
        except KeyNotFoundError:
            return None
        assert entry.value is not None and entry.revision is not None
        return Stored(ClusterRecord.from_json(entry.value), entry.revision)

    async def save(self, record: ClusterRecord, revision: int | None) -> int:
        """Writes `record` if the key is still at `revision` (None: if it does not exist); raises
        TransientError otherwise, so the event is handled again from the newer record."""
        try:
            if revision is None:
                return await self._kv.create(record.cluster_id, record.to_json())
            return await self._kv.update(record.cluster_id, record.to_json(), last=revision)
        except KeyWrongLastSequenceError:
            raise _changed(record.cluster_id) from None

    async def delete(self, cluster_id: str, revision: int) -> None:
        try:
            await self._kv.delete(cluster_id, last=revision)
        except APIError as error:
            if error.err_code not in (10071, 10164):  # the wrong-last-sequence codes
                raise
            raise _changed(cluster_id) from None

    async def cluster_ids(self) -> list[str]:
        try:
            return await self._kv.keys()
        except NoKeysError:
            return []


def _changed(cluster_id: str) -> TransientError:
    return TransientError(f"the record of {cluster_id} changed meanwhile", delay=0.2, reason=Reason.CONFLICT)

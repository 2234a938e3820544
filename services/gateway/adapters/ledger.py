"""The gateway's ledger: per Vk8s uid, what it told the pipeline (a ClusterRecord), in a NATS KV
bucket. A restarted gateway compares the objects it lists with these records instead of trusting
that nothing happened while it was down. Per namespace, key `quota.<namespace>` holds what its
quota holds (Holdings)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from services.gateway.logic import ClusterRecord, Holdings

# JetStream's "wrong last sequence": someone else wrote the key since we read it.
_WRONG_LAST_SEQUENCE = (10071, 10164)
# Cluster uids have no dots: these keys cannot be taken for a record.
QUOTA_PREFIX = "quota."

M = TypeVar("M", bound=BaseModel)
Change = Callable[[ClusterRecord | None], ClusterRecord | None]


class LedgerContended(Exception):
    """A key that kept changing under compare-and-set."""


class Ledger:
    def __init__(self, kv: KeyValue, *, cas_attempts: int = 10):
        self._kv = kv
        self._cas_attempts = cas_attempts

    async def get(self, uid: str) -> ClusterRecord | None:
        return (await self._read(uid, ClusterRecord))[0]

    async def change(self, uid: str, change: Change) -> ClusterRecord | None:
        """Applies `change` (None = forget) with compare-and-set on the key's revision; on a
        concurrent write it re-reads and applies `change` again."""
        return await self._compare_and_set(uid, ClusterRecord, change)

    async def change_holdings(
        self, namespace: str, change: Callable[[Holdings | None], Holdings | None]
    ) -> Holdings | None:
        """The namespace's quota holdings, changed as `change` says, compare-and-set."""
        return await self._compare_and_set(f"{QUOTA_PREFIX}{namespace}", Holdings, change)

    async def _compare_and_set(self, key: str, model: type[M], change: Callable[[M | None], M | None]) -> M | None:
        for _ in range(self._cas_attempts):
            current, revision = await self._read(key, model)
            wanted = change(current)
            if wanted == current:
                return current
            try:
                if wanted is None:
                    await self._kv.delete(key, last=revision)
                elif current is None:
                    await self._kv.create(key, wanted.model_dump_json().encode())
                else:
                    await self._kv.update(key, wanted.model_dump_json().encode(), last=revision)
                return wanted
            except KeyWrongLastSequenceError:
                continue
            except APIError as error:  # delete() does not translate the error code
                if error.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
        raise LedgerContended(f"ledger key {key} kept changing")

    async def forget(self, uid: str) -> None:
        await self.change(uid, lambda _: None)

    async def records(self) -> list[ClusterRecord]:
        watcher = await self._kv.watchall(ignore_deletes=True)
        records: list[ClusterRecord] = []
        try:
            async for entry in watcher:
                if entry is None:  # the end of what the bucket holds now
                    break
                if not entry.key.startswith(QUOTA_PREFIX):
                    records.append(ClusterRecord.model_validate_json(entry.value))
        finally:
            await watcher.stop()
        return records

    async def _read(self, key: str, model: type[M]) -> tuple[M | None, int]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None, 0
        # A get answers with the stored value and its revision; a delete marker raises above.
        assert entry.value is not None and entry.revision is not None
        return model.model_validate_json(entry.value), entry.revision

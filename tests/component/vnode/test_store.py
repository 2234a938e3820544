"""The vnode cluster records in a real NATS KV bucket: compare-and-set keeps concurrent writers honest."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext

from libs.events import TransientError, ensure_kv
from services.vnode.adapters.store import RecordStore
from tests.unit.vnode.factories import record


@pytest.fixture
async def store(js: JetStreamContext) -> RecordStore:
    return RecordStore(await ensure_kv(js, "vk8s-vnode"))


async def test_record_round_trips_under_its_cluster_id(store: RecordStore) -> None:
    rec = record()
    revision = await store.save(rec, None)

    stored = await store.get("ml/team-a")

    assert stored is not None and stored.record == rec and stored.revision == revision
    assert await store.cluster_ids() == ["ml/team-a"]


async def test_missing_record(store: RecordStore) -> None:
    assert await store.get("ml/none") is None
    assert await store.cluster_ids() == []


async def test_stale_writer_is_told_to_retry(store: RecordStore) -> None:
    first = await store.save(record(), None)
    await store.save(record(paused=True), first)

    with pytest.raises(TransientError):
        await store.save(record(labels={"late": "writer"}), first)
    with pytest.raises(TransientError):
        await store.save(record(), None)
    stored = await store.get("ml/team-a")
    assert stored is not None and stored.record.paused


async def test_delete_is_compare_and_set_and_the_key_can_be_created_again(store: RecordStore) -> None:
    first = await store.save(record(), None)
    second = await store.save(record(paused=True), first)

    with pytest.raises(TransientError):
        await store.delete("ml/team-a", first)
    await store.delete("ml/team-a", second)

    assert await store.get("ml/team-a") is None
    assert await store.cluster_ids() == []
    await store.save(record(), None)
    assert await store.get("ml/team-a") is not None

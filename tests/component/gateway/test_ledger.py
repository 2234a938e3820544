"""The gateway's ledger on a real JetStream KV bucket."""

from __future__ import annotations

import asyncio
import uuid

from nats.js import JetStreamContext

from libs.api.validation import Problem
from libs.events import ensure_kv
from services.gateway.adapters.ledger import Ledger
from services.gateway.logic import ClusterRecord, Holdings, take_quota
from tests.support.events import cluster_requested

UID = "4d2c8f0e-1b7a-4e52-8c3d-9f6a1e2b3c4d"


async def ledger(js: JetStreamContext) -> Ledger:
    # A bucket of the test's own: a stream deleted between tests was seen to come back with its data.
    return Ledger(await ensure_kv(js, f"vk8s-gateway-test-{uuid.uuid4().hex[:8]}"))


def announced(generation: int) -> ClusterRecord:
    return ClusterRecord(uid=UID, cluster_id="default/team-a", announced_generation=generation)


async def test_change_creates_updates_and_forgets(js: JetStreamContext) -> None:
    book = await ledger(js)
    assert await book.get(UID) is None
    await book.change(UID, lambda _: announced(1))
    await book.change(UID, lambda r: r.model_copy(update={"accepted_generation": 1}) if r else None)
    assert await book.get(UID) == announced(1).model_copy(update={"accepted_generation": 1})
    await book.forget(UID)
    assert await book.get(UID) is None
    # A forgotten key (a delete marker) can be written again.
    await book.change(UID, lambda _: announced(2))
    assert await book.get(UID) == announced(2)


async def test_concurrent_changes_are_all_applied(js: JetStreamContext) -> None:
    book = await ledger(js)
    await book.change(UID, lambda _: announced(0).model_copy(update={"announced_generation": None}))

    def bump(record: ClusterRecord | None) -> ClusterRecord:
        assert record is not None
        return record.model_copy(update={"announced_generation": (record.announced_generation or 0) + 1})

    await asyncio.gather(*(book.change(UID, bump) for _ in range(5)))
    record = await book.get(UID)
    assert record is not None and record.announced_generation == 5


async def test_records_lists_what_is_kept(js: JetStreamContext) -> None:
    book = await ledger(js)
    assert await book.records() == []
    other = "5e3d9a1f-2c8b-4f63-9d4e-0a7b2c3d4e5f"
    await book.change(UID, lambda _: announced(1))
    await book.change(other, lambda _: ClusterRecord(uid=other, cluster_id="default/team-b"))
    await book.forget(other)
    assert await book.records() == [announced(1)]


async def test_concurrent_acceptances_cannot_both_take_the_last_of_a_quota(js: JetStreamContext) -> None:
    book = await ledger(js)
    spec = cluster_requested(gpus=2).spec
    outcomes: dict[str, tuple[Problem, ...]] = {}

    async def accept(uid: str) -> None:
        def take(current: Holdings | None) -> Holdings | None:
            outcome = take_quota(current or Holdings(), "team-a", uid, spec, max_clusters=3, max_gpus=4)
            outcomes[uid] = outcome if isinstance(outcome, tuple) else ()
            return outcome if isinstance(outcome, Holdings) else current

        await book.change_holdings("team-a", take)

    await asyncio.gather(*(accept(f"uid-{index}") for index in range(6)))

    held = await book.change_holdings("team-a", lambda current: current)
    assert held is not None and sum(held.gpus.values()) == 4 and len(held.gpus) == 2
    assert sorted(uid for uid, problems in outcomes.items() if not problems) == sorted(held.gpus)
    assert [record.uid for record in await book.records()] == [], "quota keys are not cluster records"

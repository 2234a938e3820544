"""The projector's read model on a real JetStream KV: compare-and-set under concurrent writers,
the watched view, the read API and the metrics."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import nats
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.events import ensure_kv
from services.projector.adapters.http import ReadApi
from services.projector.adapters.metrics import ProjectorMetrics
from services.projector.adapters.read_model import ClusterStore, ClusterView, key_of
from services.projector.logic import render_status
from tests.support.events import NOW
from tests.unit.projector.sequence import Timeline
from tests.unit.projector.test_logic import fold, full_story


@pytest.fixture
async def kv_bucket(js: JetStreamContext) -> AsyncIterator[str]:
    # A bucket of its own per test: a re-created bucket of the same name can briefly still show
    # the deleted one's values to a new watcher.
    bucket = f"vk8s-clusters-test-{uuid.uuid4().hex[:8]}"
    await ensure_kv(js, bucket)
    yield bucket
    await js.delete_key_value(bucket)


@pytest.fixture
async def second_connection(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url, name="vk8s-tests-second-projector")
    yield client
    await client.drain()


async def test_two_projectors_racing_on_one_cluster_lose_no_event(
    js: JetStreamContext, second_connection: NATS, kv_bucket: str
) -> None:
    registry = CollectorRegistry()
    metrics = ProjectorMetrics(registry)
    stores = [
        ClusterStore(await js.key_value(kv_bucket), on_conflict=metrics.kv_conflicts.inc),
        ClusterStore(await second_connection.jetstream().key_value(kv_bucket), on_conflict=metrics.kv_conflicts.inc),
    ]
    events = full_story(Timeline())
    rng = random.Random(5)
    deliveries = events + rng.sample(events, 6)  # some delivered to both projectors
    rng.shuffle(deliveries)

    async def projector(index: int) -> None:
        for event in deliveries[index::2]:
            await stores[index].apply(event)
            await asyncio.sleep(0)

    # Both projectors at once, yielding between events, so their read-modify-writes interleave.
    await asyncio.gather(projector(0), projector(1))
    record, _ = await stores[0].get(events[0].cluster_id)
    assert record is not None
    assert {fact.id for fact in record.state.facts} == {event.id for event in events}
    assert record.status == render_status(fold(events))
    # The race did happen, and compare-and-set resolved it.
    assert (registry.get_sample_value("vk8s_projector_kv_conflicts_total") or 0) > 0


async def test_concurrent_writers_of_one_cluster_without_yielding(
    js: JetStreamContext, second_connection: NATS, kv_bucket: str
) -> None:
    stores = [
        ClusterStore(await js.key_value(kv_bucket)),
        ClusterStore(await second_connection.jetstream().key_value(kv_bucket)),
    ]
    events = Timeline().happy_path()
    await asyncio.gather(*(stores[i % 2].apply(event) for i, event in enumerate(events)))
    record, _ = await stores[1].get(events[0].cluster_id)
    assert record is not None
    assert len(record.state.facts) == len(events)
    assert record.status["phase"] == "Running"


async def test_redelivery_is_not_written_again(js: JetStreamContext, kv_bucket: str) -> None:
    store = ClusterStore(await js.key_value(kv_bucket))
    event = Timeline().accepted()
    first = await store.apply(event)
    again = await store.apply(event)
    assert first.applied and not again.applied
    assert again.revision == first.revision
    assert again.after.model_dump() == first.after.model_dump()


async def test_records_of_clusters_deleted_past_the_retention_are_removed(js: JetStreamContext, kv_bucket: str) -> None:
    store = ClusterStore(await js.key_value(kv_bucket))
    gone, kept = Timeline(name="gone"), Timeline(name="kept")
    for event in [*gone.happy_path(), gone.delete_requested(), gone.deleted(), *kept.happy_path()]:
        await store.apply(event)
    hour = timedelta(hours=1)
    at = NOW + timedelta(days=1)

    assert await store.remove_expired(NOW, hour) == []  # within the retention
    assert await store.remove_expired(at, hour) == [gone.cluster_id]
    assert await store.get(gone.cluster_id) == (None, 0)
    assert (await store.get(kept.cluster_id))[0] is not None
    assert await store.remove_expired(at, hour) == []


async def test_view_read_api_and_metrics(js: JetStreamContext, kv_bucket: str) -> None:
    registry = CollectorRegistry()
    metrics = ProjectorMetrics(registry)
    kv = await js.key_value(kv_bucket)
    store = ClusterStore(kv)
    view = ClusterView(kv, on_change=metrics.set_phases)
    running, pending = Timeline("team-a", "alpha"), Timeline("team-b", "beta")
    for event in running.happy_path():
        metrics.observe(await store.apply(event), event)
    for event in [pending.accepted(), pending.unschedulable(), pending.failed("scheduler", "x", reason="Quota")]:
        change = await store.apply(event)
        metrics.observe(change, event)
        metrics.observe(await store.apply(event), event)  # redelivered: observed once

    api = ReadApi()
    app = web.Application()
    api.install(app)
    async with TestClient(TestServer(app)) as http:
        assert (await http.get("/v1/clusters")).status == 503
        api.serve(store, view)
        watching = asyncio.create_task(view.run())
        try:
            await asyncio.wait_for(view.synced.wait(), 10)
            body = await (await http.get("/v1/clusters")).json()
            assert [(i["clusterId"], i["status"]["phase"]) for i in body["items"]] == [
                ("team-a/alpha", "Running"),
                ("team-b/beta", "Failed"),
            ]
            only = await (await http.get("/v1/clusters", params={"phase": "Running"})).json()
            assert [i["name"] for i in only["items"]] == ["alpha"]
            one = await (await http.get("/v1/clusters/team-b/beta")).json()
            assert one["status"]["message"] == "scheduler: x"
            assert (await http.get("/v1/clusters/team-b/nope")).status == 404

            # A later change reaches the view and the gauge.
            await store.apply(running.delete_requested())
            deleting = {"phase": "Deleting"}
            await asyncio.wait_for(
                _until(lambda: registry.get_sample_value("vk8s_projector_clusters", deleting) == 1), 10
            )
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    assert registry.get_sample_value("vk8s_projector_clusters", {"phase": "Failed"}) == 1
    assert registry.get_sample_value("vk8s_projector_clusters", {"phase": "Running"}) == 0
    assert registry.get_sample_value("vk8s_projector_failures_total", {"stage": "scheduler", "reason": "Quota"}) == 1
    assert registry.get_sample_value("vk8s_projector_time_to_running_seconds_count") == 1
    assert registry.get_sample_value("vk8s_projector_time_to_running_seconds_sum") == 11.0
    assert registry.get_sample_value("vk8s_projector_stage_duration_seconds_count", {"stage": "kubernetes"}) == 1
    assert key_of("team-a/alpha") == "team-a.alpha"


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.02)

"""`vk8s create --wait` / `delete --wait` see a cluster's events from the first: the watch is live
when start_watch returns, so an event published right after it (no sleep) is printed."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from libs.events import Envelope, Publisher, StreamSettings, ensure_stream
from libs.events.catalog import ClusterFailed
from tests.support.events import NOW, cluster_requested
from vk8s.client import follow
from vk8s.commands.clusters import start_watch
from vk8s.progress import describe


async def test_events_published_right_after_start_watch_are_all_shown(
    nc: NATS, js: JetStreamContext, capsys: pytest.CaptureFixture[str]
) -> None:
    await ensure_stream(js, StreamSettings())
    request = Envelope.new(cluster_requested("watched"), cluster_id="default/watched", now=NOW)
    other = Envelope.new(cluster_requested("other"), cluster_id="default/other", now=NOW)
    failed = request.follow(
        ClusterFailed(stage="gateway", reason="Test", message="ends the wait", failed_event=request.type), now=NOW
    )
    watcher = await start_watch(nc, "default/watched", 0.0, 30.0, {"Failed"})
    publisher = Publisher(js)
    await publisher.publish(request)
    await publisher.publish(other)
    await publisher.publish(failed)
    assert await watcher == "Failed"
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        describe(request),
        "Failed in gateway: Test: ends the wait",
    ]


async def test_following_with_since_replays_the_events_stored_before_it_started(nc: NATS, js: JetStreamContext) -> None:
    await ensure_stream(js, StreamSettings())
    earlier = Envelope.new(cluster_requested("replayed"), cluster_id="default/replayed", now=NOW)
    await Publisher(js).publish(earlier)
    events = follow(nc, "default/replayed", since_s=60)
    try:
        first = await asyncio.wait_for(anext(events), timeout=30)
    finally:
        await events.aclose()
    assert first.id == earlier.id

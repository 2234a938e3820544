"""`vk8s create --wait` / `delete --wait` see a cluster's events from the first: the watch is live
when start_watch returns, so an event the projector relays right after it (no sleep) is printed,
once, and another cluster's is not."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from libs.events import Envelope
from libs.events.catalog import ClusterFailed
from services.projector.adapters.feed import EventFeed
from tests.support.events import NOW, cluster_requested
from vk8s.commands.clusters import start_watch
from vk8s.progress import describe


async def test_events_relayed_right_after_start_watch_are_all_shown_once(
    nc: NATS, capsys: pytest.CaptureFixture[str]
) -> None:
    request = Envelope.new(cluster_requested("watched"), cluster_id="default/watched", now=NOW)
    other = Envelope.new(cluster_requested("other"), cluster_id="default/other", now=NOW)
    failed = request.follow(
        ClusterFailed(stage="gateway", reason="Test", message="ends the wait", failed_event=request.type), now=NOW
    )
    watcher = await start_watch(nc, "default/watched", 0.0, 30.0, {"Failed"})
    feed = EventFeed(nc)
    for event in (request, other, request, failed):  # the request relayed again: a redelivery
        await feed.relay(event)
    assert await watcher == "Failed"
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        describe(request),
        "Failed in gateway: Test: ends the wait",
    ]

"""The stream refuses an event over the size limit at publish: no consumer ever sees it."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from libs.events import MAX_EVENT_BYTES, STREAM_NAME, Envelope, Publisher, StreamSettings, ensure_stream
from tests.support.events import NOW, cluster_requested


async def test_an_event_over_the_limit_is_refused_and_nothing_is_stored(js: JetStreamContext) -> None:
    info = await ensure_stream(js, StreamSettings())
    assert info.config.max_msg_size == MAX_EVENT_BYTES
    request = cluster_requested().model_copy(update={"annotations": {"padding": "x" * MAX_EVENT_BYTES}})
    oversized = Envelope.new(request, cluster_id="default/team-a", now=NOW, event_id="oversized-1")
    assert len(oversized.to_json()) > MAX_EVENT_BYTES

    with pytest.raises(BadRequestError, match=r"maximum message size exceeded|message size exceeds maximum"):
        await Publisher(js).publish(oversized)

    assert (await js.stream_info(STREAM_NAME)).state.messages == 0
    fitting = Envelope.new(cluster_requested(), cluster_id="default/team-a", now=NOW, event_id="fitting-1")
    await Publisher(js).publish(fitting)
    assert (await js.stream_info(STREAM_NAME)).state.messages == 1

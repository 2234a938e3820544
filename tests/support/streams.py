"""Reading a test's own events back from the stream: by its ids, never just the first on a subject
(which may be another test's, on the one nats-server the session shares)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext

from libs.events import REGISTRY, STREAM_NAME, Envelope

About = Callable[[Envelope[Any]], bool]


async def next_event(js: JetStreamContext, subject: str, about: About, timeout: float = 10.0) -> Envelope[Any]:
    """The first event on `subject` that is `about` this test's own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sub = await js.subscribe(subject, ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=max(0.01, deadline - loop.time()))
            event = REGISTRY.decode(msg.subject, msg.data)
            if about(event):
                return event
    finally:
        await sub.unsubscribe()


async def events_on(js: JetStreamContext, subject: str) -> list[Envelope[Any]]:
    """Every event on `subject` in the stream now (those published and acknowledged so far)."""
    info = await js.stream_info(STREAM_NAME, subjects_filter=subject)
    count = (info.state.subjects or {}).get(subject, 0)
    sub = await js.subscribe(subject, ordered_consumer=True)
    try:
        return [REGISTRY.decode(subject, (await sub.next_msg(timeout=5)).data) for _ in range(count)]
    finally:
        await sub.unsubscribe()


def caused_by(cause: Envelope[Any]) -> About:
    return lambda event: event.causation_id == cause.id


def answering(request_id: str) -> About:
    """A `cluster.rejected` answering the request with this id (its Nats-Msg-Id)."""
    return lambda event: getattr(event.data, "request_id", None) == request_id

"""A service's declared routes behind the real consumer wrapper, on a test's own JetStream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nats.js import JetStreamContext

from libs.events import REGISTRY, STREAM_NAME, Backoff, Consumer, ConsumerSettings, EventMetrics, Publisher, Route
from libs.events.consumer import Clock, utc_now

# Redeliveries within the test's patience, not production's minute.
TEST_BACKOFF = Backoff(base_s=0.1, max_s=0.2)


async def start_consumer(
    js: JetStreamContext,
    routes: Sequence[Route],
    *,
    durable: str,
    metrics: EventMetrics,
    stream: str = STREAM_NAME,
    concurrency: int = 1,
    prefetch: int = 0,
    backoff: Backoff = TEST_BACKOFF,
    clock: Clock = utc_now,
    answers_invalid_requests: bool = True,
    **settings: Any,
) -> Consumer:
    """Starts the consumer `durable` for `routes` (subject, handler, what it may emit), filtering
    their subjects in the order given; `settings` go to its ConsumerSettings (max_deliver,
    ack_wait_s, ...). The caller stops it."""
    consumer = Consumer(
        service=durable,
        js=js,
        publisher=Publisher(js, metrics),
        registry=REGISTRY,
        settings=ConsumerSettings(durable=durable, filter_subjects=tuple(route.subject for route in routes), **settings),
        routes=routes,
        metrics=metrics,
        stream=stream,
        concurrency=concurrency,
        prefetch=prefetch,
        backoff=backoff,
        clock=clock,
        answers_invalid_requests=answers_invalid_requests,
    )
    await consumer.start()
    return consumer

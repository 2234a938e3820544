"""The consumer wrapper and publisher against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.events import (
    STREAM_NAME,
    Consumer,
    ConsumerSettings,
    Envelope,
    EventMetrics,
    PermanentError,
    Publisher,
    Publishes,
    Route,
    StreamSettings,
    TransientError,
    UndeclaredEvent,
    ensure_consumer,
    ensure_stream,
)
from libs.events.catalog import ClusterAccepted, ClusterFailed, ClusterRejected, ClusterRequested
from libs.events.reasons import Reason
from tests.support.consumers import start_consumer
from tests.support.events import NOW, cluster_requested
from tests.support.streams import answering, caused_by, next_event

Handler = Callable[[Envelope[Any]], Awaitable[Sequence[Envelope[Any]]]]


@pytest.fixture
async def stream(js: JetStreamContext) -> str:
    """This test's own stream: its consumers, pending messages and redeliveries are nobody else's."""
    name = f"BACKBONE-{uuid.uuid4().hex[:12]}"
    await ensure_stream(js, StreamSettings(name=name))
    return name


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def run_consumer(
    js: JetStreamContext, stream: str, registry: CollectorRegistry
) -> AsyncIterator[Callable[..., Awaitable[Consumer]]]:
    started: list[Consumer] = []
    metrics: dict[str, EventMetrics] = {}  # one per durable in the registry; its replicas share it

    async def start(
        handler: Handler,
        *,
        subjects: Sequence[str] = ("cluster.requested",),
        emits: Sequence[str] = ("cluster.accepted",),
        durable: str = "test",
        answers_invalid_requests: bool = True,
        concurrency: int = 1,
        prefetch: int = 0,
        **settings: Any,
    ) -> Consumer:
        if durable not in metrics:
            metrics[durable] = EventMetrics(durable, registry)
        consumer = await start_consumer(
            js,
            [Route(s, handler, frozenset(emits)) for s in subjects],
            durable=durable,
            metrics=metrics[durable],
            stream=stream,
            concurrency=concurrency,
            prefetch=prefetch,
            clock=lambda: NOW,
            answers_invalid_requests=answers_invalid_requests,
            **settings,
        )
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        await consumer.stop()


async def count(js: JetStreamContext, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


def request_envelope(name: str = "team-a") -> Envelope[ClusterRequested]:
    return Envelope.new(cluster_requested(name), cluster_id=f"default/{name}", now=NOW)


async def test_provisioning_is_idempotent(js: JetStreamContext) -> None:
    first = await ensure_stream(js, StreamSettings())
    second = await ensure_stream(js, StreamSettings(duplicate_window_s=60))
    assert first.config.name == second.config.name == STREAM_NAME
    assert second.config.duplicate_window == 60
    settings = ConsumerSettings(durable="twice", filter_subjects=("cluster.requested", "cluster.updated"))
    await ensure_consumer(js, STREAM_NAME, settings)
    info = await ensure_consumer(js, STREAM_NAME, settings)
    assert info.config.filter_subjects == ["cluster.requested", "cluster.updated"]


async def test_publish_dedupes_by_event_id(js: JetStreamContext, stream: str) -> None:
    publisher = Publisher(js)
    event = request_envelope()
    first = await publisher.publish(event)
    again = await publisher.publish(event)
    assert not first.duplicate
    assert again.duplicate
    assert await count(js, stream, "cluster.requested") == 1


async def test_success_publishes_results_then_acks(js: JetStreamContext, stream: str, run_consumer: Any) -> None:
    handled: list[str] = []

    async def accept(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        handled.append(event.id)
        accepted = ClusterAccepted(
            name=event.data.name, namespace=event.data.namespace, spec=event.data.spec, uid="u-1", generation=1
        )
        return [event.follow(accepted, now=NOW)]

    consumer = await run_consumer(accept)
    request = request_envelope()
    await Publisher(js).publish(request)
    accepted = await next_event(js, "cluster.accepted", caused_by(request))
    assert accepted.causation_id == request.id
    assert accepted.correlation_id == request.correlation_id
    assert accepted.cluster_id == "default/team-a"
    await wait_settled(js, stream)
    assert handled == [request.id]
    assert consumer.ready


async def wait_settled(js: JetStreamContext, stream: str, durable: str = "test") -> None:
    for _ in range(100):
        info = await js.consumer_info(stream, durable)
        if info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"consumer not settled: {info}")


async def test_transient_error_naks_and_redelivers(js: JetStreamContext, stream: str, run_consumer: Any) -> None:
    deliveries: list[int] = []

    async def flaky(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        deliveries.append(len(deliveries) + 1)
        if len(deliveries) < 3:
            raise TransientError("apiserver busy", delay=0.1)
        return []

    await run_consumer(flaky)
    await Publisher(js).publish(request_envelope())
    for _ in range(100):
        if len(deliveries) == 3:
            break
        await asyncio.sleep(0.05)
    assert deliveries == [1, 2, 3]
    assert await count(js, stream, "cluster.failed") == 0


async def test_permanent_error_terms_and_publishes_failure(js: JetStreamContext, stream: str, run_consumer: Any) -> None:
    calls = 0

    async def broken(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        nonlocal calls
        calls += 1
        raise PermanentError("node image has no kubeadm", reason=Reason.NODE_IMAGE_UNSUPPORTED)

    await run_consumer(broken, ack_wait_s=1.0)
    request = request_envelope()
    await Publisher(js).publish(request)
    failed = await next_event(js, "cluster.failed", caused_by(request))
    assert isinstance(failed.data, ClusterFailed)
    assert failed.data.reason == Reason.NODE_IMAGE_UNSUPPORTED
    assert failed.data.stage == "test"
    assert failed.data.failed_event == "cluster.requested"
    assert failed.causation_id == request.id
    await asyncio.sleep(1.5)  # past ack_wait: a terminated message is not redelivered
    assert calls == 1


async def test_an_answer_the_handler_does_not_declare_is_not_published_and_fails_the_cause(
    js: JetStreamContext, stream: str, run_consumer: Any
) -> None:
    async def answers_twice(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        accepted = ClusterAccepted(
            name=event.data.name, namespace=event.data.namespace, spec=event.data.spec, uid="u-1", generation=1
        )
        rejected = ClusterRejected(request_id=event.id, problems=["declared nowhere"])
        return [event.follow(accepted, now=NOW), event.follow(rejected, now=NOW)]

    await run_consumer(answers_twice, emits=("cluster.accepted",))
    request = request_envelope()
    await Publisher(js).publish(request)
    failed = await next_event(js, "cluster.failed", caused_by(request))
    assert failed.data.reason == "UndeclaredEvent"
    assert "cluster.rejected" in failed.data.message
    await wait_settled(js, stream)
    # Not even the declared answer went out: the handler's answers are published all or none.
    assert await count(js, stream, "cluster.accepted") == 0
    assert await count(js, stream, "cluster.rejected") == 0


async def test_a_declared_publisher_publishes_only_what_it_declares(js: JetStreamContext, stream: str) -> None:
    tracker = Publisher(js).only(Publishes.of("a tracker", ClusterAccepted))
    request = request_envelope()
    accepted = ClusterAccepted(
        name=request.data.name, namespace=request.data.namespace, spec=request.data.spec, uid="u-1", generation=1
    )
    await tracker.publish(request.follow(accepted, now=NOW))
    with pytest.raises(UndeclaredEvent, match=re.escape("a tracker published cluster.requested")):
        await tracker.publish(request)
    assert await count(js, stream, "cluster.accepted") == 1
    assert await count(js, stream, "cluster.requested") == 0


async def test_redelivery_is_bounded(js: JetStreamContext, stream: str, run_consumer: Any) -> None:
    calls = 0

    async def always_down(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        nonlocal calls
        calls += 1
        raise ConnectionError("apiserver unreachable")

    await run_consumer(always_down, max_deliver=3)
    request = request_envelope()
    await Publisher(js).publish(request)
    failed = await next_event(js, "cluster.failed", caused_by(request))
    assert failed.data.reason == "RetriesExhausted"
    assert "apiserver unreachable" in failed.data.message
    assert calls == 3


async def test_long_handler_is_kept_alive(js: JetStreamContext, stream: str, run_consumer: Any) -> None:
    calls = 0

    async def slow(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3.5)  # over three ack_waits
        return []

    await run_consumer(slow, ack_wait_s=1.0)
    await Publisher(js).publish(request_envelope())
    await asyncio.sleep(4.5)
    assert calls == 1
    await wait_settled(js, stream)


@pytest.mark.parametrize(("concurrency", "prefetch"), [(2, 0), (1, 2)], ids=["waiting-in-the-broker", "prefetched"])
async def test_messages_waiting_for_a_slow_handler_run_exactly_once(
    js: JetStreamContext, stream: str, run_consumer: Any, concurrency: int, prefetch: int
) -> None:
    """More messages than handler slots, each handled for over two ack_waits: none may expire
    while it waits (in the broker, or fetched ahead) and run a second time, nor run twice at once."""
    calls: list[str] = []
    running: set[str] = set()
    overlapping: list[str] = []

    async def slow(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        calls.append(event.id)
        if event.id in running:
            overlapping.append(event.id)
        running.add(event.id)
        await asyncio.sleep(2.5)
        running.discard(event.id)
        return []

    await run_consumer(slow, ack_wait_s=1.0, concurrency=concurrency, prefetch=prefetch)
    requests = [request_envelope(f"team-{index}") for index in range(3)]
    for request in requests:
        await Publisher(js).publish(request)
    for _ in range(300):
        if len(calls) >= 3 and not running:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # past another ack_wait: nothing comes back
    assert sorted(calls) == sorted(r.id for r in requests)
    assert overlapping == []
    await wait_settled(js, stream)


async def deliver_unsettled(js: JetStreamContext, stream: str, times: int) -> None:
    """Takes the next message `times` times without settling it, as a replica that crashes while
    handling it would (ack_wait must be short)."""
    sub = await js.pull_subscribe_bind("test", stream)
    try:
        for delivery in range(1, times + 1):
            [msg] = await sub.fetch(1, timeout=10)
            assert msg.metadata.num_delivered == delivery
    finally:
        await sub.unsubscribe()


async def test_unsettled_deliveries_do_not_use_up_the_retries(js: JetStreamContext, stream: str, run_consumer: Any) -> None:
    """Two deliveries lost to crashes with max_deliver 2: the broker does not drop the message,
    the next replica still handles it."""
    await ensure_consumer(js, stream, ConsumerSettings("test", ("cluster.requested",), ack_wait_s=1.0, max_deliver=2))
    request = request_envelope()
    await Publisher(js).publish(request)
    await deliver_unsettled(js, stream, 2)
    handled: list[str] = []

    async def record(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        handled.append(event.id)
        return []

    await run_consumer(record, ack_wait_s=1.0, max_deliver=2)
    for _ in range(100):
        if handled:
            break
        await asyncio.sleep(0.05)
    assert handled == [request.id]
    await wait_settled(js, stream)
    assert await count(js, stream, "cluster.failed") == 0


async def test_a_message_never_settled_ends_in_cluster_failed(js: JetStreamContext, stream: str, run_consumer: Any) -> None:
    """Past twice max_deliver deliveries without an outcome (a handler that crashes its service),
    the loop ends with an answer instead of another try."""
    await ensure_consumer(js, stream, ConsumerSettings("test", ("cluster.requested",), ack_wait_s=1.0, max_deliver=1))
    request = request_envelope()
    await Publisher(js).publish(request)
    await deliver_unsettled(js, stream, 2)
    calls = 0

    async def record(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        nonlocal calls
        calls += 1
        return []

    await run_consumer(record, ack_wait_s=1.0, max_deliver=1)
    failed = await next_event(js, "cluster.failed", caused_by(request))
    assert failed.data.reason == "RetriesExhausted"
    assert "delivered 3 times, never settled" in failed.data.message
    assert failed.causation_id == request.id
    await wait_settled(js, stream)
    assert calls == 0


@pytest.mark.parametrize(
    ("raw", "expected", "causation", "correlation"),
    [
        (b"{not json", "not valid JSON", "bad-1", "bad-1"),
        (b"[]", "must be a JSON object", "bad-1", "bad-1"),
        (
            json.dumps(
                {
                    "id": "r-1",
                    "type": "cluster.requested",
                    "schemaVersion": 1,
                    "time": "2026-11-28T12:00:00Z",
                    "clusterId": "default/team-b",
                    "correlationId": "portal-7",
                    "data": {"name": "team-b", "spec": {"nodes": []}},
                }
            ).encode(),
            "data.spec.nodes",
            "r-1",
            "portal-7",
        ),
        (
            json.dumps({"id": "r-2", "type": "cluster.requested", "schemaVersion": 7, "data": {}}).encode(),
            "schemaVersion: must be 1",
            "r-2",
            "r-2",
        ),
        (
            json.dumps({"id": "x" * 129, "correlationId": 5, "type": "cluster.requested", "data": {}}).encode(),
            "id:",
            "bad-1",
            "bad-1",
        ),
    ],
)
async def test_malformed_request_is_rejected_and_consumer_goes_on(
    js: JetStreamContext, stream: str, run_consumer: Any, raw: bytes, expected: str, causation: str, correlation: str
) -> None:
    handled: list[str] = []

    async def record(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        handled.append(event.data.name)
        return []

    await run_consumer(record)
    await js.publish("cluster.requested", raw, headers={"Nats-Msg-Id": "bad-1"})
    rejected = await next_event(js, "cluster.rejected", answering("bad-1"))
    assert isinstance(rejected.data, ClusterRejected)
    assert rejected.data.request_id == "bad-1"
    assert any(expected in problem for problem in rejected.data.problems), rejected.data.problems
    # The rejection answers the request, as far as its ids could be read (else its Nats-Msg-Id).
    assert (rejected.causation_id, rejected.correlation_id) == (causation, correlation)
    # the bad message is terminated, and the next good one is handled
    await Publisher(js).publish(request_envelope("team-c"))
    for _ in range(100):
        if handled:
            break
        await asyncio.sleep(0.05)
    assert handled == ["team-c"]
    await wait_settled(js, stream)
    assert await count(js, stream, "cluster.rejected") == 1


async def test_metrics_count_outcomes(js: JetStreamContext, stream: str, run_consumer: Any, registry: CollectorRegistry) -> None:
    async def ok(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        return []

    await run_consumer(ok)
    await Publisher(js).publish(request_envelope())
    await js.publish("cluster.requested", b"{}", headers={"Nats-Msg-Id": "bad-2"})
    await next_event(js, "cluster.rejected", answering("bad-2"))
    await wait_settled(js, stream)
    labels = {"subject": "cluster.requested"}
    assert registry.get_sample_value("vk8s_test_messages_total", {**labels, "outcome": "ack"}) == 1
    assert registry.get_sample_value("vk8s_test_messages_total", {**labels, "outcome": "invalid"}) == 1
    assert registry.get_sample_value("vk8s_test_events_published_total", {"subject": "cluster.rejected", "duplicate": "false"}) == 1


async def test_consumer_lag_is_observed(js: JetStreamContext, stream: str, run_consumer: Any, registry: CollectorRegistry) -> None:
    gate = asyncio.Event()

    async def blocked(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        await gate.wait()
        return []

    consumer = await run_consumer(blocked)
    for index in range(3):
        await Publisher(js).publish(request_envelope(f"team-{index}"))
    await asyncio.sleep(0.5)
    await consumer.observe_lag()
    pending = registry.get_sample_value("vk8s_test_consumer_pending_messages", {"consumer": "test"})
    in_hand = registry.get_sample_value("vk8s_test_consumer_ack_pending_messages", {"consumer": "test"})
    assert pending is not None and in_hand is not None  # both gauges observed
    assert pending + in_hand == 3 and in_hand >= 1
    gate.set()
    await wait_settled(js, stream)
    await consumer.observe_lag()
    assert registry.get_sample_value("vk8s_test_consumer_ack_pending_messages", {"consumer": "test"}) == 0


async def test_one_rejection_per_bad_request_when_several_services_read_requests(
    nc: NATS, js: JetStreamContext, stream: str, run_consumer: Any
) -> None:
    """The gateway answers; another reader of cluster.requested (the projector) drops it silently, so a
    plain subscriber sees one rejection, not one per consumer (the broker's dedupe hides only the stored copy)."""

    async def nothing(event: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        return []

    seen: list[bytes] = []

    async def record(msg: Msg) -> None:
        seen.append(msg.data)

    sub = await nc.subscribe("cluster.rejected", cb=record)
    await run_consumer(nothing)
    await run_consumer(nothing, durable="reader", answers_invalid_requests=False)
    await js.publish("cluster.requested", b"{not json", headers={"Nats-Msg-Id": "bad-3"})
    await wait_settled(js, stream)
    await wait_settled(js, stream, durable="reader")
    # Both settled: each published before it terminated, on this connection; the flush's
    # round trip comes back after the server delivered those publishes to `sub`.
    await nc.flush()
    await sub.unsubscribe()
    assert len(seen) == 1, seen

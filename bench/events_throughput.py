"""Publish and consume N events with raw nats-py and with the project's Publisher/Consumer, against
a real nats-server with JetStream; print msgs/s for each and the wrapper/raw ratio.

    python bench/events_throughput.py [-n 5000] [--nats-url nats://...]

Target: the wrapper keeps at least half of raw nats-py throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import nats
import structlog
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.events import (
    REGISTRY,
    STREAM_NAME,
    Consumer,
    ConsumerSettings,
    Envelope,
    EventMetrics,
    Publisher,
    Route,
    StreamSettings,
    ensure_stream,
)
from libs.runtime import ServiceSettings
from tests.support.events import NOW, cluster_requested
from vk8s.local.nats_server import LocalNatsServer

BATCH = 256


def events(n: int) -> list[Envelope[Any]]:
    payload = cluster_requested("bench")
    return [Envelope.new(payload, cluster_id="default/bench", now=NOW, event_id=f"bench-{i}") for i in range(n)]


async def fresh_stream(js: JetStreamContext) -> None:
    for info in await js.streams_info():
        if info.config.name is not None:  # the server names every stream it lists
            await js.delete_stream(info.config.name)
    await ensure_stream(js, StreamSettings())


async def raw_round(js: JetStreamContext, batch: list[Envelope[Any]]) -> tuple[float, float]:
    await fresh_stream(js)
    bodies = [(e.id, e.to_json()) for e in batch]
    started = time.perf_counter()
    for event_id, body in bodies:
        await js.publish("cluster.requested", body, headers={"Nats-Msg-Id": event_id})
    published = time.perf_counter() - started

    sub = await js.pull_subscribe("cluster.requested", durable="raw", stream=STREAM_NAME)
    received = 0
    started = time.perf_counter()
    while received < len(batch):
        for msg in await sub.fetch(BATCH, timeout=5):
            await msg.ack()
            received += 1
    consumed = time.perf_counter() - started
    await sub.unsubscribe()
    return published, consumed


async def wrapper_round(js: JetStreamContext, batch: list[Envelope[Any]]) -> tuple[float, float]:
    await fresh_stream(js)
    metrics = EventMetrics("bench", CollectorRegistry())
    publisher = Publisher(js, metrics)
    started = time.perf_counter()
    for event in batch:
        await publisher.publish(event)
    published = time.perf_counter() - started

    done = asyncio.Event()
    received = 0

    async def handle(event: Envelope[Any]) -> list[Envelope[Any]]:
        nonlocal received
        received += 1
        if received == len(batch):
            done.set()
        return []

    consumer = Consumer(
        service="bench",
        js=js,
        publisher=publisher,
        registry=REGISTRY,
        settings=ConsumerSettings(durable="wrapper", filter_subjects=("cluster.requested",), max_ack_pending=10_000),
        routes=[Route("cluster.requested", handle, frozenset())],
        metrics=metrics,
        # As every service runs it (VK8S_CONSUMER_CONCURRENCY, VK8S_CONSUMER_PREFETCH).
        concurrency=ServiceSettings().consumer_concurrency,
        prefetch=ServiceSettings().consumer_prefetch,
    )
    started = time.perf_counter()
    await consumer.start()
    await asyncio.wait_for(done.wait(), timeout=120)
    consumed = time.perf_counter() - started
    await consumer.stop()
    return published, consumed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="events per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each; the best is reported")
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL"))
    args = parser.parse_args()

    # The wrapper's one log line per message is rendered, as in production, then discarded.
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=open(os.devnull, "w")),  # noqa: SIM115
    )
    server = None if args.nats_url else LocalNatsServer().start()
    url = args.nats_url if server is None else server.url
    try:
        nc = await nats.connect(url)
        js = nc.jetstream()
        batch = events(args.n)
        raw = [await raw_round(js, batch) for _ in range(args.rounds)]
        wrapped = [await wrapper_round(js, batch) for _ in range(args.rounds)]
        await nc.drain()
    finally:
        if server:
            server.stop()

    def rates(rounds: list[tuple[float, float]]) -> tuple[float, float, float]:
        pub = max(args.n / p for p, _ in rounds)
        con = max(args.n / c for _, c in rounds)
        both = max(args.n / (p + c) for p, c in rounds)
        return pub, con, both

    raw_pub, raw_con, raw_both = rates(raw)
    w_pub, w_con, w_both = rates(wrapped)
    print(f"events per round: {args.n}, rounds: {args.rounds} (best shown), payload: {len(batch[0].to_json())} bytes")
    print(f"{'':10} {'publish msg/s':>14} {'consume msg/s':>14} {'end-to-end msg/s':>17}")
    print(f"{'raw':10} {raw_pub:14.0f} {raw_con:14.0f} {raw_both:17.0f}")
    print(f"{'wrapper':10} {w_pub:14.0f} {w_con:14.0f} {w_both:17.0f}")
    print(f"{'ratio':10} {w_pub / raw_pub:14.2f} {w_con / raw_con:14.2f} {w_both / raw_both:17.2f}")
    print(f"target: end-to-end ratio >= 0.50 -> {'met' if w_both / raw_both >= 0.5 else 'NOT met'}")


if __name__ == "__main__":
    asyncio.run(main())

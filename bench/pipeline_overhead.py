"""What the pipeline adds per hop: N clusters (default 20, 1 vNode and 1 GPU each) requested at once
on the kwok tier. For every event of theirs and every stage consuming it, from the events' own
timestamps:

- pickup: from the event's time to the stage's first action on it (the start of its first
  "Handled message": the log line's time minus the handling's duration);
- output: from the event's time to the first event the stage published in answer (the event
  whose causation id is the cause's id), which includes the stage's own work.

Prints p50 and p99 per hop (target: p99 of pickups under 250 ms). Starts its own stack (NATS,
testbed, services) unless --use-running is given, deletes what it created.

    python bench/pipeline_overhead.py [--clusters 20] [--use-running]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.aio.client import Client as NATS
from nats.js import api as js_api

from bench.time_to_running import arguments, local_stack, run_until, small_cluster, vk8s_of
from libs.events import REGISTRY, STREAM_NAME, Envelope
from vk8s import client as vk8s_client

TARGET_P99_MS = 250.0


async def stream_events(nc: NATS, cluster_ids: set[str], since: datetime) -> list[Envelope[Any]]:
    """The clusters' events in the stream from `since` on, in stream order."""
    js = nc.jetstream()
    last = (await js.stream_info(STREAM_NAME)).state.last_seq
    config = js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.BY_START_TIME, opt_start_time=since)
    sub = await js.subscribe("cluster.>", ordered_consumer=True, config=config)
    found: list[Envelope[Any]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            event = REGISTRY.decode(msg.subject, msg.data)
            if event.cluster_id in cluster_ids:
                found.append(event)
            if msg.metadata.sequence.stream >= last:
                return found
    finally:
        await sub.unsubscribe()


def first_actions(logs: Path) -> dict[tuple[str, str], datetime]:
    """(event id, service) -> when the service first started handling the event."""
    started: dict[tuple[str, str], datetime] = {}
    for log in sorted(logs.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") != "Handled message" or "event_id" not in entry:
                continue
            ended = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
            start = ended - timedelta(milliseconds=float(entry.get("duration_ms", 0)))
            key = (entry["event_id"], entry.get("service", log.stem))
            started[key] = min(start, started.get(key, start))
    return started


def hops(events: Iterable[Envelope[Any]], actions: Mapping[tuple[str, str], datetime]) -> dict[str, list[float]]:
    """Latencies in milliseconds per hop: "pickup <type> -> <service>" and "output <type> -> <type>"."""
    events = list(events)
    by_id = {event.id: event for event in events}
    latencies: dict[str, list[float]] = defaultdict(list)
    for (event_id, service), start in actions.items():
        if (cause := by_id.get(event_id)) is not None:
            latencies[f"pickup  {cause.type} -> {service}"].append((start - cause.time).total_seconds() * 1000)
    answered: set[tuple[str, str]] = set()
    for event in sorted(events, key=lambda e: e.time):
        cause = by_id.get(event.causation_id or "")
        if cause is None or cause.id == event.id or (cause.id, event.type) in answered:
            continue
        answered.add((cause.id, event.type))
        latencies[f"output  {cause.type} -> {event.type}"].append((event.time - cause.time).total_seconds() * 1000)
    return latencies


def percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(latencies: Mapping[str, list[float]]) -> None:
    width = max(len(hop) for hop in latencies)
    print(f"{'hop':<{width}}  {'n':>4}  {'p50 ms':>9}  {'p99 ms':>9}")
    over = []
    for hop in sorted(latencies, key=lambda h: (not h.startswith("pickup"), statistics.median(latencies[h]))):
        values = latencies[hop]
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"{hop:<{width}}  {len(values):>4}  {p50:>9.1f}  {p99:>9.1f}")
        if hop.startswith("pickup") and p99 >= TARGET_P99_MS:
            over.append(hop)
    print(f"pickups with p99 >= {TARGET_P99_MS:.0f} ms: {', '.join(over) if over else 'none'}")


async def measure(endpoints: vk8s_client.Endpoints, logs: Path, clusters: int, timeout_s: float) -> None:
    batch = [vk8s_of(small_cluster(f"hop-{i:02d}")) for i in range(clusters)]
    async with vk8s_client.connected(endpoints) as (nc, api):
        since = datetime.now().astimezone() - timedelta(seconds=1)
        started = time.monotonic()
        outcomes = await asyncio.gather(*(run_until(nc, vk8s, timeout_s) for vk8s in batch))
        running = sum(1 for result, _ in outcomes if result == "Running")
        print(f"{clusters} clusters at once: {running} Running in {time.monotonic() - started:.1f}s")
        events = await stream_events(nc, {vk8s.cluster_id for vk8s in batch}, since)
        for vk8s in batch:
            await vk8s_client.delete_object(api, vk8s.metadata.name, "default")
    report(hops(events, first_actions(logs)))


def main() -> None:
    args = arguments(__doc__)
    with local_stack(args.use_running) as (endpoints, logs):
        asyncio.run(measure(endpoints, logs, args.clusters, args.timeout))


if __name__ == "__main__":
    main()

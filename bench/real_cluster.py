"""Request to Running on real vNodes (kubelet + containerd in privileged pods, kubeadm inside), 1
master + 1 worker without Kubeflow: one cluster alone, then N at once (default 3); the time each
stage took (from the events' own timestamps), memory per vNode, and the vNode images' build
records. Starts its own real-tier stack on one host node and stops it after.

    .venv/bin/python bench/real_cluster.py [--clusters 3] [--gpus-per-node 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.aio.client import Client as NATS

from bench.time_to_running import vk8s_of
from libs.api import Vk8s
from libs.events.catalog import VNodeSetupProgressed
from vk8s import client as vk8s_client
from vk8s.images.cache import images_dir
from vk8s.local import stack
from vk8s.progress import outcome
from vk8s.testbed.config import FleetSpec, StateLayout, pinned_versions
from vk8s.testbed.real.node import cgroup_root

# The pipeline's hand-offs, in order: each stage ends with the first event of its type.
STAGES = (
    ("accept", "cluster.accepted"),
    ("schedule", "cluster.scheduled"),
    ("ips", "cluster.ips.allocated"),
    ("vnodes", "cluster.vnodes.ready"),
    ("kubeadm", "cluster.kubernetes.ready"),
    ("ready", "cluster.ready"),
)


def cluster(name: str, minor: str) -> str:
    node = "resources: {requests: {cpu: 250m, memory: 1Gi, nvidia.com/gpu: 1}, limits: {cpu: '2', memory: 4Gi, nvidia.com/gpu: 1}}"
    return f"""
apiVersion: vk8s.skt.co.kr/v1alpha1
kind: Vk8s
metadata: {{name: {name}, namespace: default}}
spec:
  kubernetes: {{version: "{minor}"}}
  nodes:
  - {{name: {name}-master, role: master, {node}}}
  - {{name: {name}-worker, role: worker, {node}}}
"""


async def run_one(nc: NATS, vk8s: Vk8s, timeout_s: float) -> tuple[str, float, dict[str, float], dict[str, float]]:
    """(outcome, seconds from request to it, seconds per stage, seconds per bootstrap step)."""
    seen: dict[str, float] = {}
    step_started: dict[str, float] = {}
    steps: dict[str, float] = {}
    result, started = "TimedOut", time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            follower = vk8s_client.follow(nc, vk8s.cluster_id)
            publish = asyncio.create_task(_publish_soon(nc, vk8s))
            async for event in follower:
                seen.setdefault(event.type, event.time.timestamp())
                if isinstance(event.data, VNodeSetupProgressed):
                    key = f"{event.data.vnode.rsplit('-', 1)[-1]} {event.data.step}"
                    if event.data.status == "Running":
                        step_started[key] = event.time.timestamp()
                    elif event.data.status == "Success" and key in step_started:
                        steps[key] = event.time.timestamp() - step_started[key]
                if (ended := outcome(event)) in ("Running", "Failed"):
                    result = ended
                    break
            await publish
    except TimeoutError:
        pass
    stages, previous = {}, seen.get("cluster.requested")
    for label, kind in STAGES:
        if kind in seen and previous is not None:
            stages[label] = seen[kind] - previous
            previous = seen[kind]
    return result, time.monotonic() - started, stages, steps


async def _publish_soon(nc: NATS, vk8s: Vk8s) -> None:
    await asyncio.sleep(0.2)
    await vk8s_client.publish_request(nc, vk8s)


def vnode_memory(layout: StateLayout) -> list[tuple[str, float, float]]:
    """(pod cgroup, RSS MiB, page cache MiB) of each vNode pod on the real nodes."""
    root = Path("/sys/fs/cgroup/memory") / cgroup_root(layout).lstrip("/")
    found = []
    for stat in sorted(root.glob("*/kubepods/*/pod*/memory.stat")) + sorted(root.glob("*/kubepods/pod*/memory.stat")):
        values = dict(line.split() for line in stat.read_text().splitlines())
        found.append((stat.parent.name, int(values["total_rss"]) / 2**20, int(values["total_cache"]) / 2**20))
    return found


def describe(stages: dict[str, float]) -> str:
    return ", ".join(f"{label} {seconds:.1f}s" for label, seconds in stages.items())


def slowest_steps(steps: dict[str, float], shown: int = 6) -> str:
    """The bootstrap steps that took longest, which is where the kubeadm stage goes."""
    ranked = sorted(steps.items(), key=lambda item: -item[1])[:shown]
    return "kubeadm steps: " + ", ".join(f"{step} {seconds:.1f}s" for step, seconds in ranked)


async def measure(endpoints: vk8s_client.Endpoints, layout: StateLayout, clusters: int, timeout_s: float) -> None:
    minor = ".".join(pinned_versions()["KUBERNETES_VERSION"].split(".")[:2])

    def make(name: str) -> Vk8s:
        return vk8s_of(cluster(name, minor))

    async with vk8s_client.connected(endpoints) as (nc, api):
        alone = make("bench-alone")
        result, seconds, stages, steps = await run_one(nc, alone, timeout_s)
        print(f"1 cluster (1 master + 1 worker, no Kubeflow): {result} after {seconds:.1f}s ({describe(stages)})")
        print(f"  {slowest_steps(steps)}")
        for pod, rss, cache in vnode_memory(layout):
            print(f"  vNode pod {pod}: RSS {rss:.0f} MiB, page cache {cache:.0f} MiB")
        await vk8s_client.delete_object(api, alone.metadata.name, "default")
        await asyncio.sleep(20)  # let the deletion finish before the batch

        batch = [make(f"bench-{index}") for index in range(clusters)]
        started = time.monotonic()
        outcomes = await asyncio.gather(*(run_one(nc, vk8s, timeout_s) for vk8s in batch))
        wall = time.monotonic() - started
        times = sorted(seconds for result, seconds, _, _ in outcomes if result == "Running")
        print(f"{clusters} clusters at once: {len(times)} Running in {wall:.1f}s; per cluster p50 "
              f"{statistics.median(times) if times else float('nan'):.1f}s, max {max(times, default=float('nan')):.1f}s")  # fmt: skip
        for vk8s, (result, seconds, stages, _) in zip(batch, outcomes, strict=True):
            print(f"  {vk8s.metadata.name}: {result} after {seconds:.1f}s ({describe(stages)})")
        memory = vnode_memory(layout)
        print(f"  {len(memory)} vNode pods: RSS {sum(m[1] for m in memory):.0f} MiB in all, "
              f"median {statistics.median([m[1] for m in memory]) if memory else 0:.0f} MiB")  # fmt: skip
        for vk8s in batch:
            await vk8s_client.delete_object(api, vk8s.metadata.name, "default")


def image_records() -> None:
    for record in sorted((images_dir() / "kink").glob("*.tar.json")):
        data = json.loads(record.read_text())
        print(f"image {data['ref']}: built in {data['build_seconds']}s, {data['size_bytes'] / 1e6:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    layout = stack.StackLayout(Path(tempfile.mkdtemp(prefix="vk8s-bench-")))
    fleet = FleetSpec(
        nodes=1, gpus_per_node=args.gpus_per_node, runtime="real", vnode_images=(pinned_versions()["KUBERNETES_VERSION"],)
    )
    started = time.monotonic()
    info = stack.up(layout, fleet)
    print(f"real-tier stack up in {time.monotonic() - started:.1f}s")
    image_records()
    try:
        asyncio.run(measure(vk8s_client.Endpoints.of_stack(info), layout.testbed, args.clusters, args.timeout))
    finally:
        stack.down(layout)


if __name__ == "__main__":
    main()

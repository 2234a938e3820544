"""Time from request to Running on the local stack: the demo cluster alone, then N clusters
requested at once (default 20). Starts its own stack (NATS, testbed, services) unless
--use-running is given, deletes what it created, and prints the figures.

    python bench/time_to_running.py [--clusters 20] [--use-running]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.aio.client import Client as NATS

from libs.api import Vk8s, validate_document
from libs.api.documents import load_documents
from vk8s import client as vk8s_client
from vk8s.local import stack
from vk8s.progress import outcome
from vk8s.testbed.config import FleetSpec

ROOT = Path(__file__).resolve().parents[1]


def vk8s_of(text: str) -> Vk8s:
    """The one Vk8s in `text`, valid (a bench of an invalid cluster measures nothing)."""
    [document] = load_documents(text)
    validation = validate_document(document.content)
    if validation.vk8s is None:
        raise ValueError(f"not a valid Vk8s: {validation.errors}")
    return validation.vk8s


def small_cluster(name: str) -> str:
    return f"""
apiVersion: vk8s.skt.co.kr/v1alpha1
kind: Vk8s
metadata: {{name: {name}, namespace: default}}
spec:
  kubernetes: {{version: "1.36"}}
  nodes:
  - name: {name}-master
    role: master
    resources:
      requests: {{cpu: "1", memory: 2Gi, nvidia.com/gpu: 1}}
      limits: {{cpu: "2", memory: 4Gi, nvidia.com/gpu: 1}}
"""


async def run_until(nc: NATS, vk8s: Vk8s, timeout_s: float) -> tuple[str, float]:
    started = time.monotonic()
    result = "TimedOut"
    try:
        async with asyncio.timeout(timeout_s):
            follower = vk8s_client.follow(nc, vk8s.cluster_id)
            publish = asyncio.create_task(_publish_soon(nc, vk8s))
            async for event in follower:
                if (ended := outcome(event)) in ("Running", "Failed"):
                    result = ended
                    break
            await publish
    except TimeoutError:
        pass
    return result, time.monotonic() - started


async def _publish_soon(nc: NATS, vk8s: Vk8s) -> None:
    await asyncio.sleep(0.2)
    await vk8s_client.publish_request(nc, vk8s)


async def measure(endpoints: vk8s_client.Endpoints, clusters: int, timeout_s: float) -> None:
    demo = vk8s_of((ROOT / "examples/demo.yaml").read_text())
    batch = [vk8s_of(small_cluster(f"bench-{i:02d}")) for i in range(clusters)]
    async with vk8s_client.connected(endpoints) as (nc, api):
        await vk8s_client.ensure_password_secret(api, demo)
        result, seconds = await run_until(nc, demo, timeout_s)
        print(f"demo cluster (2 vNodes, Kubeflow): {result} after {seconds:.1f}s")

        started = time.monotonic()
        outcomes = await asyncio.gather(*(run_until(nc, vk8s, timeout_s) for vk8s in batch))
        wall = time.monotonic() - started
        times = sorted(s for r, s in outcomes if r == "Running")
        failed = [r for r, _ in outcomes if r != "Running"]
        if times:
            print(
                f"{clusters} clusters at once (1 vNode, 1 GPU each): {len(times)} Running, {len(failed)} not; "
                f"all done in {wall:.1f}s; per cluster p50 {statistics.median(times):.1f}s, max {times[-1]:.1f}s"
            )
        else:
            print(f"{clusters} clusters at once: none Running ({failed[:3]})")
        for vk8s in [demo, *batch]:
            await vk8s_client.delete_object(api, vk8s.metadata.name, "default")


@contextlib.contextmanager
def local_stack(use_running: bool) -> Iterator[tuple[vk8s_client.Endpoints, Path]]:
    """The stack to measure on and its log directory: the one `vk8s up` started, or a new one on the
    kwok tier (4 nodes x 8 GPUs) stopped afterwards."""
    if use_running:
        yield vk8s_client.Endpoints.resolve(), stack.StackLayout().logs
        return
    layout = stack.StackLayout(Path(tempfile.mkdtemp(prefix="vk8s-bench-")))
    started = time.monotonic()
    info = stack.up(layout, FleetSpec(nodes=4, gpus_per_node=8))
    print(f"stack up in {time.monotonic() - started:.1f}s")
    try:
        yield vk8s_client.Endpoints.of_stack(info), layout.logs
    finally:
        stack.down(layout)


def arguments(description: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--use-running", action="store_true", help="measure on the stack `vk8s up` started")
    return parser.parse_args()


def main() -> None:
    args = arguments(__doc__)
    with local_stack(args.use_running) as (endpoints, _):
        asyncio.run(measure(endpoints, args.clusters, args.timeout))


if __name__ == "__main__":
    main()

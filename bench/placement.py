"""Decision latency of the scheduler's pure placement on a large fleet.

    python bench/placement.py [--nodes 5000] [--gpus 8] [--requests 1000] [--seed 1]

Builds an inventory of N nodes with G GPUs each (two GPU models, four zones, a few tainted and
cordoned nodes), then places R random clusters of 1 to 16 vNodes one after another, booking each
placement into the inventory as the service does, so the fleet fills up as it goes. Prints p50 and
p99 decision latency (all requests, and 16-vNode gangs alone) and placements per second.

Target: p99 under 10 ms for a 16-vNode gang at 5,000 nodes.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.scheduler.logic import (
    Booking,
    HostNode,
    Inventory,
    Placement,
    PlacementRequest,
    Resources,
    Taint,
    Toleration,
    VNodeRequest,
    place,
)

GI = 1 << 30
ZONES = ("zone-a", "zone-b", "zone-c", "zone-d")
DEDICATED = Taint("dedicated", "research", "NoSchedule")


def fleet(nodes: int, gpus: int, rng: random.Random) -> Inventory:
    inventory = Inventory()
    for index in range(nodes):
        inventory.upsert_node(
            HostNode(
                name=f"gpu-node-{index:05d}",
                allocatable=Resources(gpus, 128_000, 1024 * GI, 110),
                gpu_model="H100" if index % 5 == 0 else "A100",
                zone=ZONES[index % len(ZONES)],
                taints=(DEDICATED,) if rng.random() < 0.02 else (),
                cordoned=rng.random() < 0.01,
            )
        )
    return inventory


def random_request(index: int, rng: random.Random, size: int | None = None) -> PlacementRequest:
    size = size or rng.randint(1, 16)
    gpus = rng.choice((1, 1, 2, 2, 4, 8))
    model = rng.choice((None, None, None, "A100", "H100"))
    tolerations = (Toleration("dedicated", "Exists"),) if rng.random() < 0.1 else ()
    vnodes = [VNodeRequest("master", "master", Resources(0, 4000, 16 * GI, 1), None, tolerations)]
    vnodes += [
        VNodeRequest(f"worker-{i}", "worker", Resources(gpus, 8000 * gpus, 64 * GI * gpus, 1), model, tolerations)
        for i in range(size - 1)
    ]
    return PlacementRequest(
        cluster_id=f"bench/c{index}", uid=f"uid-{index}", vnodes=tuple(vnodes), spread_zones=rng.random() < 0.3
    )


def book(inventory: Inventory, uid: str, request: PlacementRequest, placement: Placement) -> None:
    by_host: dict[str, dict[tuple[str, str], Booking]] = {}
    for assignment in placement.assignments:
        booking = Booking(uid, request.cluster_id, assignment.vnode.name, assignment.vnode.resources)
        by_host.setdefault(assignment.host, {})[booking.key] = booking
    for host, bookings in by_host.items():
        inventory.set_bookings(host, inventory.bookings_on(host) | bookings)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Timings:
    """Wall time, and the CPU time of this thread: on a busy machine the wall-clock tail is mostly
    time spent waiting for a core, which CPU time leaves out."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def time(self, request: PlacementRequest, inventory: Inventory) -> Placement | object:
        wall, cpu = time.perf_counter(), time.thread_time()
        decision = place(request, inventory)
        self.cpu.append(time.thread_time() - cpu)
        self.wall.append(time.perf_counter() - wall)
        return decision

    def line(self, label: str) -> str:
        def ms(samples: list[float], q: float) -> str:
            return f"{percentile(samples, q) * 1e3:6.3f}"

        return (
            f"{label:<34} wall p50 {ms(self.wall, 0.5)} ms  p99 {ms(self.wall, 0.99)} ms | "
            f"cpu p50 {ms(self.cpu, 0.5)} ms  p99 {ms(self.cpu, 0.99)} ms  (n={len(self.wall)})"
        )


def fill(inventory: Inventory, gpus: int) -> None:
    """Books every free GPU, so what follows meets a full fleet."""
    for node in list(inventory.nodes()):
        free = inventory.free(node.name)
        if free is not None and free.gpus > 0:
            booking = Booking("filler", "bench/filler", node.name, Resources(free.gpus, 0, 0, 0))
            inventory.set_bookings(node.name, inventory.bookings_on(node.name) | {booking.key: booking})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    started = time.perf_counter()
    inventory = fleet(args.nodes, args.gpus, rng)
    print(f"inventory: {args.nodes} nodes x {args.gpus} GPUs indexed in {time.perf_counter() - started:.2f} s")

    every, gang16, failing = Timings(), Timings(), Timings()
    placed = vnodes = gpus_booked = 0
    started = time.perf_counter()
    for index in range(args.requests):
        request = random_request(index, rng)
        decision = every.time(request, inventory)
        if isinstance(decision, Placement):
            placed += 1
            vnodes += len(request.vnodes)
            gpus_booked += sum(v.resources.gpus for v in request.vnodes)
            book(inventory, f"uid-{index}", request, decision)
    elapsed = time.perf_counter() - started
    # 16-vNode gangs on the fleet as filled so far, so that figure does not rest on a few samples.
    for index in range(300):
        gang16.time(random_request(args.requests + index, rng, size=16), inventory)
    # A full fleet: every gang is unschedulable and each failing vNode gets its reason.
    fill(inventory, args.gpus)
    for index in range(100):
        failing.time(random_request(args.requests + 300 + index, rng, size=16), inventory)

    total_gpus = args.nodes * args.gpus
    print(
        f"requests: {args.requests} random gangs of 1-16 vNodes, {placed} placed ({vnodes} vNodes), "
        f"{args.requests - placed} unschedulable; GPUs booked {gpus_booked}/{total_gpus} "
        f"({100 * gpus_booked / total_gpus:.0f}%)"
    )
    print(every.line("decision, random gangs"))
    print(gang16.line("decision, 16-vNode gangs"))
    print(failing.line("decision, 16-vNode gang, full fleet"))
    print(
        f"placements per second: {placed / elapsed:.0f} clusters/s ({vnodes / elapsed:.0f} vNodes/s), "
        "deciding and booking into the inventory, one core"
    )


if __name__ == "__main__":
    main()

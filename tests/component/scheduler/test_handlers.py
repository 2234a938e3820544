"""The scheduler's handlers over a real JetStream KV ledger and an inventory filled in-process,
with the placeholder pods and the Vk8s lookup faked: what each event books, holds and answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js import JetStreamContext

from libs.events import Envelope, Reason
from libs.events.catalog import ClusterDeleted, ClusterFailed, ClusterIPsReleased, ClusterPaused, ClusterScheduled, ClusterUnschedulable
from services.scheduler.adapters.clusters import WantedClusters
from services.scheduler.adapters.placeholders import Placeholders
from services.scheduler.handlers import SchedulerHandlers
from services.scheduler.logic import BookingKey, Reservation, ReservationState, ReservedVNode
from tests.component.scheduler.support import START, Replica, ReplicaFactory, accepted, bookings_in_bucket
from tests.unit.scheduler.support import host


@dataclass
class FakePlaceholders:
    """The placeholder pods: which vNode is held on which host now."""

    held: dict[tuple[str, str], str] = field(default_factory=dict)

    async def hold(self, reservation: Reservation, vnode: ReservedVNode) -> None:
        self.held[(reservation.cluster_id, vnode.vnode)] = vnode.host_node

    async def release(self, cluster_id: str, vnode: BookingKey) -> None:
        self.held.pop((cluster_id, vnode[1]), None)

    async def release_pod(self, namespace: str, name: str, uid: str) -> None:
        raise AssertionError("no placeholder is left unbooked in these tests")


@dataclass
class FakeClusters:
    """The Vk8s objects: every cluster exists unless named gone."""

    gone: set[str] = field(default_factory=set)

    async def wanted(self, cluster_id: str, uid: str) -> bool:
        return cluster_id not in self.gone


@dataclass
class Wired:
    replica: Replica
    handlers: SchedulerHandlers
    placeholders: FakePlaceholders
    clusters: FakeClusters


async def wired(replica: ReplicaFactory) -> Wired:
    """A scheduler on host n1 (8 GPUs) and n2 (4 GPUs) with its handlers."""
    placeholders, clusters = FakePlaceholders(), FakeClusters()
    holds: Placeholders = placeholders
    wanted: WantedClusters = clusters
    r = await replica(host("n1", gpus=8), host("n2", gpus=4), placeholders=holds, clusters=wanted)
    return Wired(r, SchedulerHandlers(scheduler=r.scheduler, clock=lambda: START), placeholders, clusters)


async def gpus_booked(js: JetStreamContext) -> dict[str, int]:
    return {node: sum(b.resources.gpus for b in (await bookings_in_bucket(js, node)).values()) for node in ("n1", "n2")}


async def test_accepted_is_scheduled_with_its_placements_booked_and_held(
    js: JetStreamContext, replica: ReplicaFactory
) -> None:
    w = await wired(replica)

    (answer,) = await w.handlers.accepted(accepted("a", 6))

    assert isinstance(answer.data, ClusterScheduled)
    placements = {p.vnode: (p.host_node, p.gpus) for p in answer.data.placements}
    assert placements["worker-0"] == ("n1", 6)  # only n1 has 6 GPUs free
    assert await gpus_booked(js) == {"n1": 6, "n2": 0}
    assert w.placeholders.held == {("team/a", vnode): where for vnode, (where, _) in placements.items()}


async def test_too_many_gpus_is_unschedulable_naming_the_vnode_and_books_nothing(
    js: JetStreamContext, replica: ReplicaFactory
) -> None:
    w = await wired(replica)

    (answer,) = await w.handlers.accepted(accepted("a", 16))

    assert isinstance(answer.data, ClusterUnschedulable)
    (why,) = answer.data.vnodes
    assert why.vnode == "worker-0" and "needs 16 nvidia.com/gpu" in why.reason
    assert await gpus_booked(js) == {"n1": 0, "n2": 0}
    assert w.placeholders.held == {}
    assert [p.cluster_id for p in w.replica.ledger.pending()] == ["team/a"]  # placed once room frees up


async def test_paused_releases_the_bookings_and_placeholders_and_keeps_the_placements(
    js: JetStreamContext, replica: ReplicaFactory
) -> None:
    w = await wired(replica)
    await w.handlers.accepted(accepted("a", 6))

    assert await w.handlers.paused(Envelope.new(ClusterPaused(generation=1), cluster_id="team/a", now=START)) == []

    assert await gpus_booked(js) == {"n1": 0, "n2": 0}
    assert w.placeholders.held == {}
    reservation, _ = await w.replica.ledger.reservation("team/a")
    assert reservation is not None and reservation.state is ReservationState.PAUSED
    assert {v.vnode: v.host_node for v in reservation.vnodes}["worker-0"] == "n1"  # where its volume is


async def test_a_failed_cluster_gives_back_its_bookings_and_placeholders(
    js: JetStreamContext, replica: ReplicaFactory
) -> None:
    w = await wired(replica)
    await w.handlers.accepted(accepted("a", 6))
    failed = ClusterFailed(
        stage="bootstrap", reason=Reason.STEP_FAILED, message="worker-0: step kubeadm-join failed",
        failed_event="cluster.vnodes.ready", generation=1,
    )  # fmt: skip

    assert await w.handlers.failed(Envelope.new(failed, cluster_id="team/a", now=START)) == []

    assert await gpus_booked(js) == {"n1": 0, "n2": 0}
    assert w.placeholders.held == {}
    assert (await w.replica.ledger.reservation("team/a"))[0] is None


async def test_an_ask_whose_vk8s_is_gone_books_nothing_and_stops_waiting(
    js: JetStreamContext, replica: ReplicaFactory
) -> None:
    w = await wired(replica)
    too_big = accepted("a", 16)
    await w.handlers.accepted(too_big)
    w.clusters.gone.add("team/a")

    assert await w.handlers.accepted(too_big) == []  # redelivered after the delete chain
    assert await w.handlers.accepted(accepted("a", 6)) == []

    assert await gpus_booked(js) == {"n1": 0, "n2": 0}
    assert w.placeholders.held == {}
    assert w.replica.ledger.pending() == []
    assert (await w.replica.ledger.reservation("team/a"))[0] is None


async def test_ips_released_frees_everything_and_answers_deleted(js: JetStreamContext, replica: ReplicaFactory) -> None:
    w = await wired(replica)
    await w.handlers.accepted(accepted("a", 6))
    released = Envelope.new(ClusterIPsReleased(uid="uid-a"), cluster_id="team/a", now=START)

    (answer,) = await w.handlers.ips_released(released)

    assert answer.data == ClusterDeleted(uid="uid-a") and answer.causation_id == released.id
    assert await gpus_booked(js) == {"n1": 0, "n2": 0}
    assert w.placeholders.held == {}
    assert (await w.replica.ledger.reservation("team/a"))[0] is None

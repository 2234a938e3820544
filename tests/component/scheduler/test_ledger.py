"""The reservation ledger on a real JetStream KV: compare-and-set across replicas, holds, pauses,
releases, retries of pending clusters and the sweep."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from nats.js import JetStreamContext

from libs.events.catalog import (
    AskedNetworks,
    ClusterDeleted,
    ClusterIPsReleased,
    ClusterScheduled,
    ClusterUnschedulable,
)
from libs.events.envelope import Envelope
from services.scheduler.handlers import SchedulerHandlers
from services.scheduler.logic import Booking, PodUsage, ReservationState, Resources, Unschedulable
from services.scheduler.scheduler import Scheduled, Stale
from tests.component.scheduler.support import (
    START,
    Clock,
    ReplicaFactory,
    accepted,
    ask,
    bookings_in_bucket,
    updated,
)
from tests.unit.scheduler.support import host


async def test_two_replicas_booking_the_last_gpus_of_a_node_at_once_exactly_one_wins(replica: ReplicaFactory) -> None:
    nodes = [host(f"n{i}") for i in range(20)]
    first, second = await replica(*nodes), await replica(*nodes)

    for node in nodes:
        ours = {("uid-a", "w"): Booking("uid-a", "team/a", "w", Resources(8, 0, 0, 1))}
        theirs = {("uid-b", "w"): Booking("uid-b", "team/b", "w", Resources(8, 0, 0, 1))}
        results = await asyncio.gather(
            first.ledger.replace_bookings(node.name, "uid-a", ours, admit=True),
            second.ledger.replace_bookings(node.name, "uid-b", theirs, admit=True),
        )
        assert sorted(results) == [False, True], node.name

    conflicts = sum(
        sample.value
        for r in (first, second)
        for metric in r.metrics.ledger_conflicts.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
    assert conflicts > 0  # the loser's write was refused by compare-and-set, not by a lucky order


async def test_two_replicas_placing_gangs_for_the_last_gpus_at_once_place_exactly_one(
    js: JetStreamContext, replica: ReplicaFactory
) -> None:
    nodes = (host("n1"), host("n2"))
    first, second = await replica(*nodes), await replica(*nodes)

    a, b = accepted("a", 8, 8), accepted("b", 8, 8)
    outcomes = await asyncio.gather(first.scheduler.schedule(ask(a)), second.scheduler.schedule(ask(b)))

    assert sorted(type(o).__name__ for o in outcomes) == ["Scheduled", "Unschedulable"]
    winner = next(o for o in outcomes if isinstance(o, Scheduled)).reservation.uid
    for node in ("n1", "n2"):
        assert {uid for uid, _ in await bookings_in_bucket(js, node)} == {winner}
    loser = next(o for o in outcomes if isinstance(o, Unschedulable))
    assert "needs 8 nvidia.com/gpu" in loser.reasons[0].text


async def test_the_same_request_twice_gives_the_same_reservation(js: JetStreamContext, replica: ReplicaFactory) -> None:
    r = await replica(host("n1"), host("n2"))
    event = accepted("a", 4, 4)

    first = await r.scheduler.schedule(ask(event))
    again = await r.scheduler.schedule(ask(event))

    assert isinstance(first, Scheduled) and isinstance(again, Scheduled)
    assert again.reservation == first.reservation
    handlers = SchedulerHandlers(scheduler=r.scheduler, clock=lambda: START)
    [scheduled] = await handlers.accepted(event)
    assert [scheduled.id] == [e.id for e in await handlers.accepted(event)]
    # The networks the spec asks for travel on: the ipmanager claims them from this event alone.
    kubernetes = event.data.spec.kubernetes
    assert scheduled.data.networks == AskedNetworks(
        pod_network_cidr=kubernetes.pod_network_cidr, service_cidr=kubernetes.service_cidr
    )
    assert sum(b.resources.gpus for b in (await bookings_in_bucket(js, "n1")).values()) == 8


async def test_a_stale_request_changes_nothing(replica: ReplicaFactory) -> None:
    r = await replica(host("n1"))
    first = accepted("a", 2)
    assert isinstance(await r.scheduler.schedule(ask(updated(first, 2, generation=2))), Scheduled)

    assert isinstance(await r.scheduler.schedule(ask(first)), Stale)


async def test_scale_out_keeps_placed_vnodes_and_places_new_ones(replica: ReplicaFactory) -> None:
    r = await replica(host("n1"), host("n2"))
    first = accepted("a", 8)
    placed = await r.scheduler.schedule(ask(first))
    assert isinstance(placed, Scheduled)
    before = {v.vnode: v.host_node for v in placed.reservation.vnodes}

    grown = await r.scheduler.schedule(ask(updated(first, 8, 8, generation=2)))

    assert isinstance(grown, Scheduled)
    after = {v.vnode: v.host_node for v in grown.reservation.vnodes}
    assert {k: after[k] for k in before} == before
    assert after["worker-1"] != after["worker-0"]
    assert grown.reservation.generation == 2


async def test_pause_releases_the_gpus_and_resume_goes_back_to_the_same_nodes_failed_or_not(
    js: JetStreamContext, replica: ReplicaFactory, clock: Clock
) -> None:
    r = await replica(host("n1"), host("n2"))
    first = accepted("a", 4)
    placed = await r.scheduler.schedule(ask(first))
    assert isinstance(placed, Scheduled)
    home = placed.reservation.vnodes[1].host_node

    await r.scheduler.pause("team/a", 2, clock.now)

    assert await bookings_in_bucket(js, home) == {}
    paused_at = clock.now
    clock.advance(5)
    await r.scheduler.fail("team/a", 2, clock.now)  # a stage gave up meanwhile: the placements stay
    paused, _ = await r.ledger.reservation("team/a")
    assert paused is not None and paused.state is ReservationState.PAUSED
    clock.advance(30)
    resumed = await r.scheduler.schedule(ask(updated(first, 4, generation=3)))
    assert isinstance(resumed, Scheduled)
    assert resumed.reservation.vnodes[1].host_node == home

    await r.scheduler.pause("team/a", 3, paused_at)  # the old pause, delivered again late
    assert await bookings_in_bucket(js, home) != {}


async def test_a_pause_asked_before_the_resume_leaves_the_resumed_cluster_booked(
    js: JetStreamContext, replica: ReplicaFactory, clock: Clock
) -> None:
    """The vNode stage answered a pause as the resume came (it claimed the pause's outcome before the
    resume reached it): the scheduler, which placed the resume already, keeps its bookings."""
    r = await replica(host("n1"), host("n2"))
    first = accepted("a", 4)
    placed = await r.scheduler.schedule(ask(first))
    assert isinstance(placed, Scheduled)
    home = placed.reservation.vnodes[1].host_node
    pause_asked = START + timedelta(seconds=10)
    clock.advance(20)
    assert isinstance(await r.scheduler.schedule(ask(updated(first, 4, generation=1, at=START + timedelta(seconds=20)))), Scheduled)
    clock.advance(5)

    await r.scheduler.pause("team/a", 1, clock.now, asked_at=pause_asked)  # published after the resume's placement

    assert await bookings_in_bucket(js, home) != {}
    kept, _ = await r.ledger.reservation("team/a")
    assert kept is not None and kept.state is not ReservationState.PAUSED
    # A pause asked after the resume releases them.
    await r.scheduler.pause("team/a", 1, clock.now, asked_at=START + timedelta(seconds=30))
    assert await bookings_in_bucket(js, home) == {}


async def test_an_unconfirmed_hold_expires_and_a_confirmed_one_stays(
    js: JetStreamContext, replica: ReplicaFactory, clock: Clock
) -> None:
    r = await replica(host("n1"), hold_s=60)
    assert isinstance(await r.scheduler.schedule(ask(accepted("held", 2))), Scheduled)
    assert isinstance(await r.scheduler.schedule(ask(accepted("ready", 2))), Scheduled)
    await r.scheduler.confirm("team/ready", 1, ["master", "worker-0"])

    clock.advance(59)
    await r.scheduler.sweep()
    assert {uid for uid, _ in await bookings_in_bucket(js, "n1")} == {"uid-held", "uid-ready"}

    clock.advance(1)
    await r.scheduler.sweep()
    assert {uid for uid, _ in await bookings_in_bucket(js, "n1")} == {"uid-ready"}
    assert (await r.ledger.reservation("team/held"))[0] is None
    confirmed, _ = await r.ledger.reservation("team/ready")
    assert confirmed is not None and confirmed.state is ReservationState.CONFIRMED


async def test_the_end_of_the_delete_chain_releases_everything_and_says_deleted(
    js: JetStreamContext, replica: ReplicaFactory
) -> None:
    r = await replica(host("n1"))
    assert isinstance(await r.scheduler.schedule(ask(accepted("a", 8))), Scheduled)
    handlers = SchedulerHandlers(scheduler=r.scheduler, clock=lambda: START)
    released = Envelope.new(ClusterIPsReleased(uid="uid-a"), cluster_id="team/a", now=START, event_id="released-a")

    events = await handlers.ips_released(released)
    again = await handlers.ips_released(released)

    assert [e.data for e in events] == [ClusterDeleted(uid="uid-a")]
    assert [e.id for e in again] == [e.id for e in events]
    assert await bookings_in_bucket(js, "n1") == {}
    assert (await r.ledger.reservation("team/a"))[0] is None


async def test_a_pending_cluster_is_placed_by_another_replica_when_capacity_frees_up(replica: ReplicaFactory) -> None:
    first, second = await replica(host("n1")), await replica(host("n1"))
    handlers = SchedulerHandlers(scheduler=first.scheduler, clock=lambda: START)
    assert isinstance(await first.scheduler.schedule(ask(accepted("a", 8))), Scheduled)
    waiting = accepted("b", 6)

    answer = await handlers.accepted(waiting)

    assert [e.type for e in answer] == [ClusterUnschedulable.subject]
    assert answer[0].data.vnodes[0].reason == "needs 6 nvidia.com/gpu; no node has a free GPU"
    await asyncio.sleep(0.2)  # the pending entry reaches the other replica through the watch
    assert [p.cluster_id for p in second.ledger.pending()] == ["team/b"]

    await first.scheduler.release("team/a", "uid-a")
    await asyncio.wait_for(second.capacity_grew.wait(), 5)  # seen through the ledger watch
    await second.scheduler.retry_pending(second.publish)

    assert [e.type for e in second.published] == [ClusterScheduled.subject]
    assert second.published[0].causation_id == waiting.id
    assert second.ledger.pending() == []


async def test_the_sweep_removes_bookings_a_crash_left_without_a_reservation(
    js: JetStreamContext, replica: ReplicaFactory
) -> None:
    r = await replica(host("n1"))
    orphan = Booking("uid-gone", "team/gone", "w", Resources(4, 0, 0, 1))
    await r.ledger.replace_bookings("n1", "uid-gone", {orphan.key: orphan}, admit=True)
    placed = await r.scheduler.schedule(ask(accepted("a", 2)))
    assert isinstance(placed, Scheduled)

    await r.scheduler.sweep()  # a difference seen once may be a write in flight
    assert "uid-gone" in {uid for uid, _ in await bookings_in_bucket(js, "n1")}
    await r.scheduler.sweep()

    assert {uid for uid, _ in await bookings_in_bucket(js, "n1")} == {"uid-a"}


async def test_a_crash_between_the_reservation_and_its_bookings_is_repaired_by_the_redelivery(
    js: JetStreamContext, replica: ReplicaFactory
) -> None:
    r = await replica(host("n1"))
    event = accepted("a", 4)
    placed = await r.scheduler.schedule(ask(event))
    assert isinstance(placed, Scheduled)
    await r.ledger.replace_bookings("n1", "uid-a", {}, admit=False)  # as if the process died mid-way

    again = await r.scheduler.schedule(ask(event))

    assert isinstance(again, Scheduled) and again.reservation == placed.reservation
    assert set(await bookings_in_bucket(js, "n1")) == {("uid-a", "master"), ("uid-a", "worker-0")}


async def test_the_sweep_puts_back_bookings_a_reservation_lists(js: JetStreamContext, replica: ReplicaFactory) -> None:
    r = await replica(host("n1"))
    assert isinstance(await r.scheduler.schedule(ask(accepted("a", 4))), Scheduled)
    await r.ledger.replace_bookings("n1", "uid-a", {}, admit=False)

    await r.scheduler.sweep()
    await r.scheduler.sweep()

    assert set(await bookings_in_bucket(js, "n1")) == {("uid-a", "master"), ("uid-a", "worker-0")}


async def test_a_failed_cluster_gives_its_gpus_back_unless_the_failure_is_older(
    js: JetStreamContext, replica: ReplicaFactory, clock: Clock
) -> None:
    r = await replica(host("n1"))
    first = accepted("a", 4)
    assert isinstance(await r.scheduler.schedule(ask(updated(first, 4, generation=2))), Scheduled)

    await r.scheduler.fail("team/a", 1, clock.now)
    assert await bookings_in_bucket(js, "n1") != {}

    await r.scheduler.fail("team/a", 2, clock.now)
    assert await bookings_in_bucket(js, "n1") == {}
    assert (await r.ledger.reservation("team/a"))[0] is None


async def test_pausing_a_cluster_that_never_fit_stops_its_wait(replica: ReplicaFactory) -> None:
    r = await replica(host("n1"))
    handlers = SchedulerHandlers(scheduler=r.scheduler, clock=lambda: START)
    first = accepted("a", 16)
    assert [e.type for e in await handlers.accepted(first)] == [ClusterUnschedulable.subject]
    assert [p.cluster_id for p in r.ledger.pending()] == ["team/a"]

    assert await handlers.updated(updated(first, 16, generation=2, paused=True)) == []

    assert r.ledger.pending() == []


async def test_a_cluster_recreated_under_the_same_name_replaces_a_leftover_reservation(
    js: JetStreamContext, replica: ReplicaFactory, clock: Clock
) -> None:
    r = await replica(host("n1"))
    assert isinstance(await r.scheduler.schedule(ask(accepted("a", 8, uid="uid-old"))), Scheduled)
    clock.advance(60)
    recreated = accepted("a", 8, uid="uid-new")
    recreated = recreated.model_copy(update={"time": clock.now})

    placed = await r.scheduler.schedule(ask(recreated))

    assert isinstance(placed, Scheduled) and placed.reservation.uid == "uid-new"
    assert {uid for uid, _ in await bookings_in_bucket(js, "n1")} == {"uid-new"}
    # The old object's request, delivered again late, changes nothing.
    assert isinstance(await r.scheduler.schedule(ask(accepted("a", 8, uid="uid-old"))), Stale)


async def test_once_the_head_of_the_queue_has_waited_later_clusters_leave_it_the_nodes_it_waits_on(
    replica: ReplicaFactory, clock: Clock
) -> None:
    r = await replica(host("n1"), host("n2"), head_protection_s=300)
    r.inventory.upsert_pod("other/trainer-1", PodUsage("n1", Resources(4, 0, 0, 1)))
    r.inventory.upsert_pod("other/trainer-2", PodUsage("n2", Resources(6, 0, 0, 1)))
    assert isinstance(await r.scheduler.schedule(ask(accepted("big", 8))), Unschedulable)

    # Before the bound, later clusters take what fits, as before.
    clock.advance(60)
    assert isinstance(await r.scheduler.schedule(ask(accepted("early", 3))), Scheduled)  # n1: 1 GPU left

    # Past it, the node the big cluster comes closest to fitting on (n2) is kept for it.
    clock.advance(300)
    late = await r.scheduler.schedule(ask(accepted("late", 2)))
    assert isinstance(late, Unschedulable)
    assert [(v.vnode, v.code) for v in late.reasons] == [("worker-0", "BehindHeadOfQueue")]
    assert late.reasons[0].text.startswith("fits, but waits behind team/big (pending since 2026-11-28T12:00:00+00:00)")
    assert "(n2)" in late.reasons[0].text
    # What fits elsewhere is still placed.
    tiny = await r.scheduler.schedule(ask(accepted("tiny", 1)))
    assert isinstance(tiny, Scheduled) and tiny.reservation.vnodes[1].host_node == "n1"

    # n2 empties: the head goes first, then the queue in order.
    r.inventory.upsert_pod("other/trainer-2", None)
    await r.scheduler.retry_pending(r.publish)
    scheduled = {e.cluster_id: e.data for e in r.published if e.type == ClusterScheduled.subject}
    assert list(scheduled) == ["team/big"]
    assert [(p.host_node, p.gpus) for p in scheduled["team/big"].placements][1] == ("n2", 8)
    assert [p.cluster_id for p in r.ledger.pending()] == ["team/late"]

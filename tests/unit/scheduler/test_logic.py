"""Placement decisions: best fit, all or nothing, GPU model, zones, taints, cordons, reasons."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.scheduler.logic import (
    AskAction,
    Booking,
    Inventory,
    PendingCluster,
    Placement,
    PodUsage,
    Reservation,
    ReservationState,
    Resources,
    Taint,
    Toleration,
    Unschedulable,
    head_of_queue,
    nodes_awaited,
    place,
    plan,
    plan_for_ask,
    reservation_for,
)
from tests.unit.scheduler.support import GI, gang, host, inventory, node_spec, spec, vnode

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def placed(decision: Placement | Unschedulable) -> Placement:
    assert isinstance(decision, Placement), decision
    return decision


def hosts_of(decision: Placement | Unschedulable) -> dict[str, str]:
    return {a.vnode.name: a.host for a in placed(decision).assignments}


def free(inv: Inventory, node: str) -> Resources:
    """What is free on a node the inventory knows."""
    resources = inv.free(node)
    assert resources is not None, f"{node} is not in the inventory"
    return resources


def zone_of(inv: Inventory, node: str) -> str:
    host_node = inv.node(node)
    assert host_node is not None and host_node.zone is not None, f"{node}: not in the inventory or in no zone"
    return host_node.zone


def booked(inv: Inventory, node: str, gpus: int, *, uid: str = "other", vnode: str = "w", cpu: int = 0) -> None:
    bookings = inv.bookings_on(node)
    booking = Booking(uid, f"team/{uid}", vnode, Resources(gpus, cpu * 1000, 0, 1))
    inv.set_bookings(node, bookings | {booking.key: booking})


# -- best fit ------------------------------------------------------------------------------------


def test_gpu_vnode_goes_to_the_node_with_the_fewest_free_gpus_that_fits() -> None:
    inv = inventory(host("eight"), host("three"), host("two"))
    booked(inv, "three", 5)
    booked(inv, "two", 6)

    assert hosts_of(place(gang(vnode("w", 2)), inv)) == {"w": "two"}
    assert hosts_of(place(gang(vnode("w", 3)), inv)) == {"w": "three"}
    assert hosts_of(place(gang(vnode("w", 4)), inv)) == {"w": "eight"}


def test_small_vnodes_pack_onto_a_used_node_so_whole_nodes_stay_free() -> None:
    inv = inventory(host("whole-1"), host("whole-2"), host("half"))
    booked(inv, "half", 4)

    hosts = hosts_of(place(gang(vnode("a", 1), vnode("b", 1), vnode("c", 2)), inv))

    assert set(hosts.values()) == {"half"}


def test_a_gang_fills_one_node_before_opening_another() -> None:
    inv = inventory(host("n1"), host("n2"), host("n3"))

    hosts = hosts_of(place(gang(*(vnode(f"w{i}", 2) for i in range(4))), inv))

    assert len(set(hosts.values())) == 1


def test_best_fit_agrees_with_a_brute_force_search() -> None:
    rng = random.Random(7)
    inv = inventory(*(host(f"n{i}", zone=f"zone-{i % 3}", model=rng.choice(["A100", "H100"])) for i in range(60)))
    for i in range(60):
        used = rng.randint(0, 8)
        if used:
            booked(inv, f"n{i}", used, cpu=rng.randint(0, 96))
    for _ in range(200):
        need = vnode("w", rng.randint(1, 8), cpu=rng.randint(1, 48), model=rng.choice([None, "A100", "H100"]))
        decision = place(gang(need), inv)
        fitting = [
            n.name
            for n in inv.nodes()
            if free(inv, n.name).covers(need.resources) and need.gpu_model in (None, n.gpu_model)
        ]
        if not fitting:
            assert isinstance(decision, Unschedulable)
            continue
        chosen = hosts_of(decision)["w"]
        assert chosen in fitting
        assert free(inv, chosen).gpus == min(free(inv, n).gpus for n in fitting)


def test_cpu_only_vnodes_prefer_nodes_without_gpus_then_gpu_nodes_with_their_gpus_taken() -> None:
    inv = inventory(
        host("gpu-free"), host("gpu-full"), host("cpu-small", gpus=0, cpu=8), host("cpu-big", gpus=0, cpu=64)
    )
    booked(inv, "gpu-full", 8)

    assert hosts_of(place(gang(vnode("m", cpu=4)), inv)) == {"m": "cpu-small"}
    assert hosts_of(place(gang(vnode("m", cpu=16)), inv)) == {"m": "cpu-big"}
    assert hosts_of(place(gang(vnode("m", cpu=80)), inv)) == {"m": "gpu-full"}


def test_placing_does_not_change_the_inventory() -> None:
    inv = inventory(host("n1"))
    place(gang(vnode("a", 8)), inv)
    assert inv.free("n1") == Resources(8, 96_000, 1024 * GI, 110)


# -- all or nothing ------------------------------------------------------------------------------


def test_a_gang_that_does_not_fit_places_nothing_and_names_the_vnodes_left_over() -> None:
    inv = inventory(host("n1"), host("n2"))

    decision = place(gang(vnode("a", 8), vnode("b", 8), vnode("c", 8)), inv)

    assert isinstance(decision, Unschedulable)
    assert [r.vnode for r in decision.reasons] == ["c"]
    assert decision.reasons[0].code == "InsufficientGpus"
    assert decision.reasons[0].text == (
        "needs 8 nvidia.com/gpu; no node has a free GPU once the cluster's other vNodes are placed"
    )
    assert decision.message.startswith("1 of 3 vNodes do not fit now, so none is placed")


def test_every_vnode_that_does_not_fit_gets_a_reason() -> None:
    inv = inventory(host("n1", gpus=4))

    decision = place(gang(vnode("master", cpu=2), vnode("w1", 8), vnode("w2", 8)), inv)

    assert isinstance(decision, Unschedulable)
    assert {r.vnode for r in decision.reasons} == {"w1", "w2"}
    assert decision.vnodes_total == 3


# -- GPU model -----------------------------------------------------------------------------------


def test_a_requested_gpu_model_is_a_requirement() -> None:
    inv = inventory(host("a100-used"), host("h100", model="H100"))
    booked(inv, "a100-used", 6)

    assert hosts_of(place(gang(vnode("w", 2, model="H100")), inv)) == {"w": "h100"}
    assert hosts_of(place(gang(vnode("w", 2)), inv)) == {"w": "a100-used"}


def test_a_missing_gpu_model_is_named_with_the_models_there_are() -> None:
    inv = inventory(host("n1"), host("n2", model="L4"))

    decision = place(gang(vnode("w", 4, model="H100")), inv)

    assert isinstance(decision, Unschedulable)
    assert decision.reasons[0].code == "GpuModelUnavailable"
    assert decision.reasons[0].text == (
        "needs 4 nvidia.com/gpu of model H100; no schedulable host node has that model (models: A100, L4)"
    )


def test_the_reason_names_the_most_free_gpus_on_one_node_and_where() -> None:
    inv = inventory(*(host(f"node-{i}", model="H100") for i in range(20)))
    for i in range(20):
        booked(inv, f"node-{i}", 8 if i != 17 else 6)

    decision = place(gang(vnode("w", 4, model="H100")), inv)

    assert isinstance(decision, Unschedulable)
    assert decision.reasons[0].text == (
        "needs 4 nvidia.com/gpu of model H100; the most free on one node is 2, on node-17"
    )


def test_a_vnode_larger_than_any_node_is_told_to_split() -> None:
    decision = place(gang(vnode("w", 16)), inventory(host("n1")))

    assert isinstance(decision, Unschedulable)
    assert decision.reasons[0].code == "GpusExceedNodeSize"
    assert "the largest has 8" in decision.reasons[0].text


def test_gpus_free_but_not_enough_cpu_alongside() -> None:
    inv = inventory(host("n1", cpu=16))
    booked(inv, "n1", 0, cpu=12)

    decision = place(gang(vnode("w", 2, cpu=8)), inv)

    assert isinstance(decision, Unschedulable)
    assert decision.reasons[0].code == "InsufficientCpuMemory"
    assert decision.reasons[0].text == (
        "needs 2 nvidia.com/gpu with 8 CPU and 16Gi memory; nodes with 2 free GPUs have at most 4 CPU (n1) free"
    )


def test_cpu_only_shortfall_names_the_best_node() -> None:
    inv = inventory(host("n1", gpus=0, cpu=8, memory_gi=32))

    decision = place(gang(vnode("m", cpu=16, memory_gi=64)), inv)

    assert isinstance(decision, Unschedulable)
    assert decision.reasons[0].text == (
        "needs 16 CPU and 64Gi memory; the most free on one node is 8 CPU (n1) and 32Gi memory (n1)"
    )


def test_cpu_and_memory_free_on_different_nodes_is_said_so() -> None:
    inv = inventory(host("cpu-rich", gpus=0, cpu=16, memory_gi=8), host("memory-rich", gpus=0, cpu=2, memory_gi=64))

    decision = place(gang(vnode("m", cpu=8, memory_gi=32)), inv)

    assert isinstance(decision, Unschedulable)
    assert decision.reasons[0].text == (
        "needs 8 CPU and 32Gi memory; no single node has that CPU and memory free together"
    )


def test_a_node_out_of_pod_slots_is_said_so() -> None:
    inv = inventory(host("n1", pods=1))
    inv.upsert_pod("x/p", PodUsage("n1", Resources(0, 0, 0, 1)))

    decision = place(gang(vnode("w", 1)), inv)

    assert isinstance(decision, Unschedulable)
    assert decision.reasons[0].text == "needs 1 nvidia.com/gpu with 4 CPU and 16Gi memory; no node has a free pod slot"


# -- zones ---------------------------------------------------------------------------------------


def test_spread_puts_each_vnode_in_the_zone_with_the_fewest_of_the_cluster() -> None:
    inv = inventory(*(host(f"{zone}-{i}", zone=zone) for zone in ("a", "b", "c") for i in range(2)))

    spread = hosts_of(place(gang(*(vnode(f"w{i}", 2) for i in range(6)), spread=True), inv))
    packed = hosts_of(place(gang(*(vnode(f"w{i}", 2) for i in range(3))), inv))

    zones = [zone_of(inv, h) for h in spread.values()]
    assert sorted(zones) == ["a", "a", "b", "b", "c", "c"]
    assert len(set(packed.values())) == 1


def test_spread_counts_the_zones_of_vnodes_that_keep_their_place() -> None:
    inv = inventory(host("a-1", zone="a"), host("b-1", zone="b"))

    hosts = hosts_of(place(gang(vnode("w2", 2), spread=True, kept_zones=("a",)), inv))

    assert hosts == {"w2": "b-1"}


def test_spread_is_a_preference_not_a_requirement() -> None:
    inv = inventory(host("a-1", zone="a"), host("b-1", zone="b"))
    booked(inv, "b-1", 8)

    hosts = hosts_of(place(gang(vnode("w1", 2), vnode("w2", 2), spread=True), inv))

    assert set(hosts.values()) == {"a-1"}


# -- taints and cordons --------------------------------------------------------------------------


def test_hard_taints_need_a_toleration_and_prefer_no_schedule_does_not_block() -> None:
    gpu_only = Taint("nvidia.com/gpu", "present", "NoSchedule")
    inv = inventory(
        host("tainted", taints=(gpu_only,)),
        host("soft", taints=(Taint("spot", "true", "PreferNoSchedule"),)),
    )
    booked(inv, "soft", 2)
    booked(inv, "tainted", 4)

    assert hosts_of(place(gang(vnode("w", 2)), inv)) == {"w": "soft"}
    tolerates = (Toleration("nvidia.com/gpu", "Exists"),)
    assert hosts_of(place(gang(vnode("w", 2, tolerations=tolerates)), inv)) == {"w": "tainted"}


@pytest.mark.parametrize(
    ("toleration", "tolerates"),
    [
        (Toleration("team", "Equal", "ml", "NoSchedule"), True),
        (Toleration("team", "Equal", "other"), False),
        (Toleration("team", "Exists"), True),
        (Toleration("team", "Exists", effect="NoExecute"), False),
        (Toleration("", "Exists"), True),
        (Toleration("", "Equal"), False),
    ],
)
def test_toleration_rules(toleration: Toleration, tolerates: bool) -> None:
    assert toleration.tolerates(Taint("team", "ml", "NoSchedule")) is tolerates


def test_untolerated_taints_are_named_in_the_reason() -> None:
    inv = inventory(host("n1", taints=(Taint("dedicated", "team-b", "NoExecute"),)))

    decision = place(gang(vnode("w", 2)), inv)

    assert isinstance(decision, Unschedulable)
    assert decision.reasons[0].code == "TaintNotTolerated"
    assert "(dedicated=team-b:NoExecute)" in decision.reasons[0].text


def test_cordoned_nodes_are_left_out() -> None:
    inv = inventory(host("cordoned", cordoned=True), host("open"))
    booked(inv, "open", 6)

    assert hosts_of(place(gang(vnode("w", 2)), inv)) == {"w": "open"}
    decision = place(gang(vnode("w", 4)), inv)
    assert isinstance(decision, Unschedulable)
    assert "the most free on one node is 2, on open" in decision.reasons[0].text


def test_nothing_schedulable_says_how_many_nodes_are_cordoned() -> None:
    decision = place(gang(vnode("w", 1)), inventory(host("n1", cordoned=True), host("n2", cordoned=True)))

    assert isinstance(decision, Unschedulable)
    assert decision.reasons[0].text == "needs 1 nvidia.com/gpu; no host node is schedulable (2 cordoned)"


def test_uncordoning_counts_as_capacity_growth() -> None:
    inv = inventory(host("n1", cordoned=True))
    assert inv.upsert_node(host("n1")) is True
    assert inv.upsert_node(host("n1")) is False
    assert hosts_of(place(gang(vnode("w", 1)), inv)) == {"w": "n1"}


# -- pods, bookings and double counting ----------------------------------------------------------


def test_every_pod_on_a_node_takes_its_requests() -> None:
    inv = inventory(host("n1"))
    inv.upsert_pod("other/trainer", PodUsage("n1", Resources(6, 1000, GI, 1)))

    assert free(inv, "n1").gpus == 2
    assert inv.upsert_pod("other/trainer", None) is True
    assert free(inv, "n1").gpus == 8


def test_a_booking_stops_counting_once_its_vnode_pod_is_bound_to_the_node() -> None:
    inv = inventory(host("n1"), host("n2"))
    mine = Booking("uid-a", "team/a", "worker-1", Resources(4, 4000, 16 * GI, 1))
    inv.set_bookings("n1", {mine.key: mine})
    assert free(inv, "n1").gpus == 4
    assert inv.reserved("n1").gpus == 4

    inv.upsert_pod("team/worker-1-0", PodUsage("n1", Resources(4, 4000, 16 * GI, 1), ("uid-a", "worker-1")))

    assert free(inv, "n1").gpus == 4  # counted once, as the pod
    assert inv.reserved("n1").gpus == 0
    assert inv.in_use("n1").gpus == 4
    assert inv.vnode_hosts("uid-a") == {"worker-1": "n1"}

    # A pod of the same vNode name in another cluster covers nothing.
    inv.upsert_pod("x/worker-1-0", PodUsage("n2", Resources(4, 0, 0, 1), ("uid-x", "worker-1")))
    inv.set_bookings("n2", {("uid-b", "worker-1"): Booking("uid-b", "team/b", "worker-1", Resources(2, 0, 0, 1))})
    assert free(inv, "n2").gpus == 2

    # The pod goes away (restarted): the booking holds the GPUs for it again.
    inv.upsert_pod("team/worker-1-0", None)
    assert inv.reserved("n1").gpus == 4
    assert inv.vnode_hosts("uid-a") == {}


def test_a_vnode_grown_in_place_books_what_its_running_pod_does_not_take() -> None:
    inv = inventory(host("n1"))
    small = Booking("uid-a", "team/a", "w1", Resources(2, 4000, 16 * GI, 1))
    inv.set_bookings("n1", {small.key: small})
    inv.upsert_pod("team/a-w1-0", PodUsage("n1", Resources(2, 4000, 16 * GI, 1), ("uid-a", "w1")))
    assert free(inv, "n1").gpus == 6

    # Grown to 8 GPUs on the same host: the 2-GPU pod still runs, the booking holds the other 6.
    request, _ = plan("team/a", "uid-a", spec(node_spec("w1", 8)), None, inv)
    assert hosts_of(place(request, inv)) == {"w1": "n1"}
    grown = Booking("uid-a", "team/a", "w1", Resources(8, 4000, 16 * GI, 1))
    assert inv.admits("n1", {grown.key: grown}, "uid-a")
    inv.set_bookings("n1", {grown.key: grown})

    assert free(inv, "n1").gpus == 0
    assert inv.reserved("n1").gpus == 6
    # Nothing else fits on the node until the grown vNode is gone (was: 6 more GPUs promised).
    assert isinstance(place(gang(vnode("x", 6), cluster_id="team/b", uid="uid-b"), inv), Unschedulable)
    other = Booking("uid-b", "team/b", "x", Resources(6, 0, 0, 1))
    assert not inv.admits("n1", {grown.key: grown, other.key: other}, "uid-b")

    # The StatefulSet rolls: the 8-GPU pod replaces the 2-GPU one, still 8 in all.
    inv.upsert_pod("team/a-w1-0", PodUsage("n1", Resources(8, 4000, 16 * GI, 1), ("uid-a", "w1")))
    assert free(inv, "n1").gpus == 0 and inv.reserved("n1").gpus == 0


def test_a_pod_of_an_earlier_cluster_of_the_same_name_covers_nothing() -> None:
    inv = inventory(host("n1"))
    # The deleted cluster's pod is still terminating; the new cluster of the same name booked 4.
    inv.upsert_pod("team/a-w1-0", PodUsage("n1", Resources(4, 0, 0, 1), ("uid-old", "w1")))
    new = Booking("uid-new", "team/a", "w1", Resources(4, 0, 0, 1))
    inv.set_bookings("n1", {new.key: new})

    assert free(inv, "n1").gpus == 0
    assert inv.vnode_hosts("uid-new") == {}
    request, _ = plan("team/a", "uid-new", spec(node_spec("w1", 4)), None, inv)
    assert request.preferred == {}


def test_a_pod_covers_no_more_of_its_booking_than_it_takes() -> None:
    inv = inventory(host("n1"))
    booking = Booking("uid-a", "team/a", "w1", Resources(8, 0, 0, 1))
    inv.set_bookings("n1", {booking.key: booking})
    inv.upsert_pod("team/a-w1-0", PodUsage("n1", Resources(1, 0, 0, 1), ("uid-a", "w1")))

    assert free(inv, "n1").gpus == 0
    assert inv.reserved("n1").gpus == 7


def test_admits_checks_the_room_left_for_the_bookings_added() -> None:
    inv = inventory(host("n1"))
    inv.upsert_pod("x/p", PodUsage("n1", Resources(6, 0, 0, 1)))
    ours = {("u", "w"): Booking("u", "team/a", "w", Resources(2, 0, 0, 1))}
    too_much = {("u", "w"): Booking("u", "team/a", "w", Resources(3, 0, 0, 1))}

    assert inv.admits("n1", ours, "u")
    assert not inv.admits("n1", too_much, "u")
    assert not inv.admits("gone", ours, "u")
    assert inv.admits("gone", {}, "u")  # removing our bookings is always allowed


def test_the_index_follows_every_change() -> None:
    rng = random.Random(3)
    inv = inventory(*(host(f"n{i}", zone=f"z{i % 2}") for i in range(30)))
    for step in range(500):
        name = f"n{rng.randrange(30)}"
        match rng.randrange(4):
            case 0:
                inv.upsert_pod(f"p{rng.randrange(40)}", PodUsage(name, Resources(rng.randint(0, 3), 0, 0, 1)))
            case 1:
                inv.upsert_pod(f"p{rng.randrange(40)}", None)
            case 2:
                booked(inv, name, rng.randint(0, 2), uid=f"u{step % 5}")
            case 3:
                inv.upsert_node(host(name, zone=f"z{rng.randrange(2)}", cordoned=rng.random() < 0.2))
    for node in inv.nodes():
        indexed = inv._indexed.get(node.name)
        if node.cordoned:
            assert indexed is None
        else:
            assert indexed is not None and indexed[1] == free(inv, node.name).gpus
            assert node.name in inv._groups[indexed[0]].buckets[indexed[1]]


# -- going back where a vNode ran ----------------------------------------------------------------


def test_a_vnode_goes_back_to_the_node_it_ran_on_when_it_fits() -> None:
    inv = inventory(host("tight"), host("home"))
    booked(inv, "tight", 6)

    assert hosts_of(place(gang(vnode("w", 2), preferred={"w": "home"}), inv)) == {"w": "home"}
    booked(inv, "home", 7)
    assert hosts_of(place(gang(vnode("w", 2), preferred={"w": "home"}), inv)) == {"w": "tight"}


# -- plans and reservations ----------------------------------------------------------------------


def reservation(cluster: Reservation | None = None, **changes: object) -> Reservation:
    base = reservation_for(
        "team/a",
        "uid-a",
        1,
        spec(node_spec("master", role="master"), node_spec("w1", 2)),
        (),
        placed(place(gang(vnode("master", role="master"), vnode("w1", 2)), inventory(host("n1")))),
        now=NOW,
        asked_at=NOW,
        hold=timedelta(minutes=15),
    )
    return (cluster or base).model_copy(update=changes)


def test_scale_out_places_only_new_vnodes_and_keeps_the_others() -> None:
    inv = inventory(host("n1"), host("n2"))
    previous = reservation()
    grown = spec(node_spec("master", role="master"), node_spec("w1", 2), node_spec("w2", 4))

    request, kept = plan("team/a", "uid-a", grown, previous, inv)

    assert [v.vnode for v in kept] == ["master", "w1"]
    assert [v.name for v in request.vnodes] == ["w2"]


def test_a_changed_vnode_is_placed_again_preferring_its_node() -> None:
    inv = inventory(host("n1"), host("n2"))
    changed = spec(node_spec("master", role="master"), node_spec("w1", 4))

    request, kept = plan("team/a", "uid-a", changed, reservation(), inv)

    assert [v.vnode for v in kept] == ["master"]
    assert [v.name for v in request.vnodes] == ["w1"]
    assert request.preferred["w1"] == "n1"


def test_a_paused_cluster_is_placed_whole_again_where_it_was() -> None:
    inv = inventory(host("n1"))
    paused = reservation(state=ReservationState.PAUSED, expires_at=None)

    request, kept = plan("team/a", "uid-a", spec(node_spec("master", role="master"), node_spec("w1", 2)), paused, inv)

    assert kept == ()
    assert {v.name for v in request.vnodes} == {"master", "w1"}
    assert request.preferred == {"master": "n1", "w1": "n1"}


def test_the_pods_of_a_cluster_are_where_its_vnodes_go_back_to() -> None:
    inv = inventory(host("n1"), host("n2"))
    inv.upsert_pod("team/w1-0", PodUsage("n2", Resources(2, 0, 0, 1), ("uid-a", "w1")))

    request, _ = plan("team/a", "uid-a", spec(node_spec("master", role="master"), node_spec("w1", 2)), None, inv)

    assert request.preferred == {"w1": "n2"}


def test_a_placement_model_applies_to_gpu_vnodes_unless_they_name_their_own() -> None:
    inv = inventory(host("n1"))
    document = spec(
        node_spec("master", role="master"),
        node_spec("w1", 1),
        node_spec("w2", 1, gpuModel="L4"),
        placement={"gpuModel": "H100", "spreadZones": True},
    )

    request, _ = plan("team/a", "uid-a", document, None, inv)

    assert {v.name: v.gpu_model for v in request.vnodes} == {"master": None, "w1": "H100", "w2": "L4"}
    assert request.spread_zones


def test_a_hold_expires_and_leaves_only_what_was_confirmed() -> None:
    held = reservation()
    assert held.state is ReservationState.HELD
    assert not held.expired(NOW + timedelta(minutes=14))
    assert held.expired(NOW + timedelta(minutes=15))

    partly = held.confirm(["w1"])
    assert partly.state is ReservationState.HELD
    confirmed = partly.without_unconfirmed()
    assert confirmed is not None and [v.vnode for v in confirmed.vnodes] == ["w1"]
    assert held.without_unconfirmed() is None

    confirmed = partly.confirm(["master"])
    assert confirmed.state is ReservationState.CONFIRMED and confirmed.expires_at is None
    assert not confirmed.expired(NOW + timedelta(days=1))


def test_a_paused_reservation_books_nothing() -> None:
    paused = reservation(state=ReservationState.PAUSED)
    assert paused.hosts() == set()
    assert paused.bookings_on("n1") == {}
    assert set(reservation().bookings_on("n1")) == {("uid-a", "master"), ("uid-a", "w1")}


def test_a_vnode_whose_pod_runs_on_a_full_node_is_placed_there_again() -> None:
    inv = inventory(host("home"), host("empty"))
    inv.upsert_pod("team/w1-0", PodUsage("home", Resources(8, 4000, 16 * GI, 1), ("uid-a", "w1")))
    inv.upsert_pod("team/w2-0", PodUsage("home", Resources(0, 4000, 16 * GI, 1), ("uid-a", "w2")))
    assert free(inv, "home").gpus == 0

    request, _ = plan("team/a", "uid-a", spec(node_spec("w1", 8), node_spec("w2")), None, inv)
    hosts = hosts_of(place(request, inv))

    assert hosts == {"w1": "home", "w2": "home"}
    mine = {("uid-a", v): Booking("uid-a", "team/a", v, r) for v, r in (("w1", Resources(8, 4000, 16 * GI, 1)),)}
    assert inv.admits("home", mine, "uid-a")  # covered by its pod, so it adds nothing


# -- the head of the pending queue ---------------------------------------------------------------


def pending(cluster_id: str, waited_s: float) -> PendingCluster:
    return PendingCluster(
        cluster_id=cluster_id, uid=f"uid-{cluster_id}", generation=1, since=NOW - timedelta(seconds=waited_s),
        message="does not fit", subject="cluster.accepted", event="{}",
    )  # fmt: skip


def test_the_head_of_the_queue_is_the_oldest_once_it_waited_past_the_bound() -> None:
    queue = [pending("team/b", 700), pending("team/a", 900), pending("team/c", 60)]

    head = head_of_queue(queue, NOW, timedelta(minutes=10))
    assert head is not None and head.cluster_id == "team/a"
    assert head_of_queue(queue, NOW, timedelta(minutes=20)) is None
    assert head_of_queue([], NOW, timedelta(0)) is None


def test_the_head_waits_on_the_nodes_closest_to_fitting_it_and_keeps_its_gang_together() -> None:
    inv = inventory(host("n1"), host("n2"), host("n3"), host("l4", model="L4"))
    booked(inv, "n1", 6)
    booked(inv, "n2", 3)
    booked(inv, "n3", 7)

    awaited = nodes_awaited(gang(vnode("master", role="master"), vnode("w0", 8), vnode("w1", 8, model="A100")), inv)

    # Each needs a whole node: w0 any model (l4, all free), w1 an A100 (n2, the most free of
    # them); the master joins one of theirs rather than hold a third node.
    assert awaited == {"l4", "n2"}
    assert nodes_awaited(gang(vnode("w1", 8, model="A100"), vnode("w2", 8, model="A100")), inv) == {"n1", "n2"}


def test_excluded_nodes_are_left_alone() -> None:
    inv = inventory(host("n1"), host("n2"))
    booked(inv, "n1", 6)

    assert hosts_of(place(gang(vnode("w", 2)), inv)) == {"w": "n1"}
    assert hosts_of(place(gang(vnode("w", 2), excluded=frozenset({"n1"})), inv)) == {"w": "n2"}
    assert hosts_of(place(gang(vnode("w", 2), preferred={"w": "n1"}, excluded=frozenset({"n1"})), inv)) == {"w": "n2"}
    assert isinstance(place(gang(vnode("w", 2), excluded=frozenset({"n1", "n2"})), inv), Unschedulable)


def test_a_placeholder_covers_its_booking_and_counts_as_reserved_not_in_use() -> None:
    inv = inventory(host("n1"))
    mine = Booking("uid-a", "team/a", "w1", Resources(4, 0, 0, 1))
    inv.set_bookings("n1", {mine.key: mine})
    inv.upsert_pod("team/a-w1-hold", PodUsage("n1", Resources(4, 0, 0, 1), ("uid-a", "w1"), placeholder=True))

    assert free(inv, "n1").gpus == 4
    assert (inv.in_use("n1").gpus, inv.reserved("n1").gpus) == (0, 4)
    assert inv.vnode_hosts("uid-a") == {}  # a placeholder is not the vNode's pod
    assert inv.unbooked_placeholders() == {}

    # The vNode pod arrives beside it: counted both until the placeholder goes (never less).
    inv.upsert_pod("team/a-w1-0", PodUsage("n1", Resources(4, 0, 0, 1), ("uid-a", "w1")))
    assert free(inv, "n1").gpus == 0 and inv.vnode_hosts("uid-a") == {"w1": "n1"}
    inv.upsert_pod("team/a-w1-hold", None)
    assert free(inv, "n1").gpus == 4 and (inv.in_use("n1").gpus, inv.reserved("n1").gpus) == (4, 0)

    # A placeholder whose booking is gone (a crash between the two) is found.
    inv.upsert_pod("team/b-w1-hold", PodUsage("n1", Resources(2, 0, 0, 1), ("uid-b", "w1"), placeholder=True))
    assert inv.unbooked_placeholders() == {"team/b-w1-hold": ("uid-b", "w1")}


# -- what an ask for a generation meets in the ledger ---------------------------------------------


def waiting(uid: str, generation: int) -> PendingCluster:
    return pending("team/a", 0).model_copy(update={"uid": uid, "generation": generation})


def test_an_ask_with_nothing_in_the_ledger_is_placed() -> None:
    assert plan_for_ask("uid-a", 1, NOW, None, None).action is AskAction.PLACE
    # A cluster of another object waiting under the name says nothing about this one.
    assert plan_for_ask("uid-a", 1, NOW, waiting("uid-old", 5), None).action is AskAction.PLACE


def test_an_ask_behind_its_own_newer_generation_waiting_for_capacity_is_stale() -> None:
    verdict = plan_for_ask("uid-a", 1, NOW, waiting("uid-a", 2), None)
    assert (verdict.action, verdict.detail) == (AskAction.STALE, "generation 2 is waiting for capacity")
    assert plan_for_ask("uid-a", 2, NOW, waiting("uid-a", 2), None).action is AskAction.PLACE


def test_a_reservation_of_another_object_of_the_name_is_dropped_only_when_older_than_the_ask() -> None:
    other = reservation(uid="uid-old")
    assert plan_for_ask("uid-a", 1, NOW + timedelta(seconds=1), None, other).action is AskAction.DROP_EARLIER
    verdict = plan_for_ask("uid-a", 1, NOW, None, other)
    assert verdict.action is AskAction.STALE
    assert verdict.detail == "a later cluster of the same name (uid-old) holds the reservation"


def test_an_ask_older_than_the_reservation_is_stale() -> None:
    verdict = plan_for_ask("uid-a", 1, NOW, None, reservation(generation=2))
    assert (verdict.action, verdict.detail) == (AskAction.STALE, "the reservation is at generation 2")


def test_an_ask_placed_before_is_booked_again_unless_paused_and_a_newer_one_is_placed() -> None:
    assert plan_for_ask("uid-a", 1, NOW, None, reservation()).action is AskAction.REBOOK
    assert plan_for_ask("uid-a", 1, NOW, None, reservation(state=ReservationState.PAUSED)).action is AskAction.PLACE
    assert plan_for_ask("uid-a", 2, NOW, None, reservation()).action is AskAction.PLACE

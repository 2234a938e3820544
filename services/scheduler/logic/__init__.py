"""Placement decisions: pure functions and in-memory structures, no I/O; time is passed in.

- `resources`: resources, taints and tolerations;
- `inventory`: the host nodes, their usage and bookings, indexed for best fit;
- `placement`: the gang placement of a cluster's vNodes (`place()`) and why a vNode does not fit;
- `records`: the ledger's records and a cluster's placement plan;
- `placeholders`: the pods that hold booked GPUs;
- `events`: the events a decision publishes.
"""

from services.scheduler.logic.events import scheduled_event, unschedulable_event
from services.scheduler.logic.inventory import Booking, BookingKey, GroupKey, HostNode, Inventory, PodUsage
from services.scheduler.logic.placeholders import HOLDS_ANNOTATION, holds, namespace_and_name, placeholder_pod, placeholders_wanted
from services.scheduler.logic.placement import (
    UNSCHEDULABLE_REASONS,
    Assignment,
    Placement,
    PlacementRequest,
    Unschedulable,
    VNodeReason,
    VNodeRequest,
    behind_head,
    nodes_awaited,
    place,
    vnode_request,
)
from services.scheduler.logic.records import (
    AskAction,
    AskPlan,
    PendingCluster,
    Reservation,
    ReservationState,
    ReservedVNode,
    head_of_queue,
    plan,
    plan_for_ask,
    reservation_for,
)
from services.scheduler.logic.resources import HARD_EFFECTS, NOTHING, Resources, Taint, Toleration, tolerated

__all__ = [
    "HARD_EFFECTS",
    "HOLDS_ANNOTATION",
    "NOTHING",
    "UNSCHEDULABLE_REASONS",
    "AskAction",
    "AskPlan",
    "Assignment",
    "Booking",
    "BookingKey",
    "GroupKey",
    "HostNode",
    "Inventory",
    "PendingCluster",
    "Placement",
    "PlacementRequest",
    "PodUsage",
    "Reservation",
    "ReservationState",
    "ReservedVNode",
    "Resources",
    "Taint",
    "Toleration",
    "Unschedulable",
    "VNodeReason",
    "VNodeRequest",
    "behind_head",
    "head_of_queue",
    "holds",
    "namespace_and_name",
    "nodes_awaited",
    "place",
    "placeholder_pod",
    "placeholders_wanted",
    "plan",
    "plan_for_ask",
    "reservation_for",
    "scheduled_event",
    "tolerated",
    "unschedulable_event",
    "vnode_request",
]

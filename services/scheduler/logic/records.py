"""The reservation ledger's records (what is booked where, who waits) and the plan of a cluster's placement from them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from libs.api.models import Vk8sSpec
from libs.events.catalog import VNodePlacement
from services.scheduler.logic.inventory import Booking, BookingKey, Inventory
from services.scheduler.logic.placement import Placement, PlacementRequest, VNodeRequest, vnode_request
from services.scheduler.logic.resources import Resources


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


class ReservationState(StrEnum):
    HELD = "held"  # booked; waits for cluster.vnodes.ready until expires_at
    CONFIRMED = "confirmed"  # the vNode pods run
    PAUSED = "paused"  # nothing booked; placements kept to send vNodes back where their disks are


class ReservedVNode(_Record):
    vnode: str
    role: Literal["master", "worker"]
    host_node: str
    gpus: int = Field(ge=0)
    cpu_millis: int = Field(ge=0)
    memory_bytes: int = Field(ge=0)
    gpu_model: str | None = None
    zone: str | None = None
    required_model: str | None = None  # what the spec asked for, to tell a changed vNode from a kept one
    confirmed: bool = False

    @property
    def resources(self) -> Resources:
        return Resources(self.gpus, self.cpu_millis, self.memory_bytes, 1)

    def still_fits(self, wanted: VNodeRequest) -> bool:
        return self.resources == wanted.resources and self.required_model == wanted.gpu_model


class Reservation(_Record):
    """One cluster's placement in the ledger; its bookings live under the host nodes' keys."""

    cluster_id: str
    uid: str
    generation: int = Field(ge=1)
    state: ReservationState
    placed_at: AwareDatetime
    asked_at: AwareDatetime | None = None
    """The time of the event that asked for this placement (None in records older than it)."""
    expires_at: AwareDatetime | None = None
    vnodes: tuple[ReservedVNode, ...] = ()

    def active(self) -> tuple[ReservedVNode, ...]:
        """The vNodes whose resources are booked."""
        return () if self.state is ReservationState.PAUSED else self.vnodes

    def hosts(self) -> set[str]:
        return {v.host_node for v in self.active()}

    def bookings_on(self, node: str) -> dict[BookingKey, Booking]:
        return {
            (self.uid, v.vnode): Booking(self.uid, self.cluster_id, v.vnode, v.resources)
            for v in self.active()
            if v.host_node == node
        }

    def expired(self, now: datetime) -> bool:
        return self.state is ReservationState.HELD and self.expires_at is not None and self.expires_at <= now

    def confirm(self, vnodes: Iterable[str]) -> Reservation:
        ready = set(vnodes)
        updated = tuple(v.model_copy(update={"confirmed": True}) if v.vnode in ready else v for v in self.vnodes)
        if all(v.confirmed for v in updated):
            return self.model_copy(update={"vnodes": updated, "state": ReservationState.CONFIRMED, "expires_at": None})
        return self.model_copy(update={"vnodes": updated})

    def without_unconfirmed(self) -> Reservation | None:
        """What an expired hold leaves: the vNodes the vNode stage confirmed, if any."""
        kept = tuple(v for v in self.vnodes if v.confirmed)
        if not kept:
            return None
        return self.model_copy(update={"vnodes": kept, "state": ReservationState.CONFIRMED, "expires_at": None})

    def placements(self) -> list[VNodePlacement]:
        return [
            VNodePlacement(
                vnode=v.vnode, role=v.role, host_node=v.host_node, gpus=v.gpus, gpu_model=v.gpu_model, zone=v.zone
            )
            for v in self.vnodes
        ]


class PendingCluster(_Record):
    """A cluster that did not fit; retried when capacity grows. `event` is the request's envelope."""

    cluster_id: str
    uid: str
    generation: int = Field(ge=1)
    since: AwareDatetime
    message: str
    subject: str
    event: str


class AskAction(StrEnum):
    STALE = "stale"
    """The ledger holds something newer than the ask: nothing to do."""
    DROP_EARLIER = "drop-earlier"
    """An earlier object of the same name left its reservation (its end never reached the
    scheduler): drop that reservation, then decide again."""
    REBOOK = "rebook"
    """Placed at this generation before (a redelivery, another replica's retry): make sure all of
    it is booked."""
    PLACE = "place"
    """Place the ask, keeping what the current reservation (if any) still holds well."""


@dataclass(frozen=True)
class AskPlan:
    action: AskAction
    detail: str = ""
    """For STALE: what in the ledger is newer."""


def plan_for_ask(
    uid: str, generation: int, asked_at: datetime, pending: PendingCluster | None, current: Reservation | None
) -> AskPlan:
    """What to do with an ask for generation `generation` of cluster object `uid`, made at
    `asked_at`, given what the ledger holds for its name: the cluster waiting for capacity and the
    reservation."""
    if pending is not None and pending.uid == uid and pending.generation > generation:
        return AskPlan(AskAction.STALE, f"generation {pending.generation} is waiting for capacity")
    if current is None:
        return AskPlan(AskAction.PLACE)
    if current.uid != uid:
        if asked_at <= current.placed_at:
            return AskPlan(AskAction.STALE, f"a later cluster of the same name ({current.uid}) holds the reservation")
        return AskPlan(AskAction.DROP_EARLIER)
    if current.generation > generation:
        return AskPlan(AskAction.STALE, f"the reservation is at generation {current.generation}")
    if current.generation == generation and current.state is not ReservationState.PAUSED:
        return AskPlan(AskAction.REBOOK)
    return AskPlan(AskAction.PLACE)


def head_of_queue(pending: Iterable[PendingCluster], now: datetime, after: timedelta) -> PendingCluster | None:
    """The oldest pending cluster once it has waited `after`: from then on the nodes it waits on
    are kept from clusters behind it (else a stream of small clusters starves a big one)."""
    waiting = [p for p in pending if now - p.since >= after]
    return min(waiting, key=lambda p: (p.since, p.cluster_id), default=None)


def plan(
    cluster_id: str, uid: str, spec: Vk8sSpec, previous: Reservation | None, inventory: Inventory
) -> tuple[PlacementRequest, tuple[ReservedVNode, ...]]:
    """What to place for `spec` given the cluster's reservation so far: returns the gang to place
    and the vNodes that keep their place (unchanged, on a node that still exists)."""
    wanted = [vnode_request(node, spec) for node in spec.nodes]
    prior = {v.vnode: v for v in previous.active()} if previous is not None else {}
    kept = tuple(
        prior[w.name]
        for w in wanted
        if w.name in prior and prior[w.name].still_fits(w) and inventory.node(prior[w.name].host_node) is not None
    )
    kept_names = {v.vnode for v in kept}
    # Where each vNode ran: its pod's node, else its earlier placement (a paused cluster's disks).
    preferred = inventory.vnode_hosts(uid)
    if previous is not None:
        preferred = {v.vnode: v.host_node for v in previous.vnodes} | preferred
    request = PlacementRequest(
        cluster_id=cluster_id,
        uid=uid,
        vnodes=tuple(w for w in wanted if w.name not in kept_names),
        spread_zones=bool(spec.placement and spec.placement.spread_zones),
        kept_zones=tuple(v.zone for v in kept),
        preferred=preferred,
    )
    return request, kept


def reservation_for(
    cluster_id: str,
    uid: str,
    generation: int,
    spec: Vk8sSpec,
    kept: tuple[ReservedVNode, ...],
    placement: Placement,
    *,
    now: datetime,
    asked_at: datetime,
    hold: timedelta,
) -> Reservation:
    placed = {
        a.vnode.name: ReservedVNode(
            vnode=a.vnode.name,
            role=a.vnode.role,
            host_node=a.host,
            gpus=a.vnode.resources.gpus,
            cpu_millis=a.vnode.resources.cpu_millis,
            memory_bytes=a.vnode.resources.memory_bytes,
            gpu_model=a.gpu_model,
            zone=a.zone,
            required_model=a.vnode.gpu_model,
        )
        for a in placement.assignments
    }
    placed |= {v.vnode: v for v in kept}
    vnodes = tuple(placed[node.name] for node in spec.nodes)
    everything_confirmed = all(v.confirmed for v in vnodes)
    return Reservation(
        cluster_id=cluster_id,
        uid=uid,
        generation=generation,
        state=ReservationState.CONFIRMED if everything_confirmed else ReservationState.HELD,
        placed_at=now,
        asked_at=asked_at,
        expires_at=None if everything_confirmed else now + hold,
        vnodes=vnodes,
    )

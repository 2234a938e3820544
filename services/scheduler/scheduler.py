"""What each event does to a cluster's reservation: decide with logic.place, commit to the ledger.

One lock serialises this replica's ledger changes (decisions then see each other's bookings);
other replicas are kept apart by the ledger's compare-and-set writes. A placement is written as
the reservation first, then as bookings node by node (in name order), each checked against the
node's room at the revision written; if another request took the room first, the bookings made
so far are put back and the placement is decided again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from libs.api.models import Vk8sSpec
from libs.events import REGISTRY, Envelope, InvalidEvent, Reason, TransientError
from libs.events.catalog import ClusterAccepted, ClusterUpdated
from services.scheduler.adapters.clusters import WantedClusters
from services.scheduler.adapters.ledger import Ledger
from services.scheduler.adapters.metrics import SchedulerMetrics
from services.scheduler.adapters.placeholders import Placeholders
from services.scheduler.logic import (
    AskAction,
    BookingKey,
    Inventory,
    PendingCluster,
    Placement,
    Reservation,
    ReservationState,
    Unschedulable,
    behind_head,
    head_of_queue,
    nodes_awaited,
    place,
    placeholders_wanted,
    plan,
    plan_for_ask,
    reservation_for,
    scheduled_event,
    unschedulable_event,
)

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
Publish = Callable[[Envelope[Any]], Awaitable[object]]


@dataclass(frozen=True)
class ClusterAsk:
    """A cluster.accepted or cluster.updated asking for the vNodes of one generation."""

    cluster_id: str
    uid: str
    generation: int
    spec: Vk8sSpec
    cause: Envelope[Any]

    @classmethod
    def from_event(cls, event: Envelope[ClusterAccepted] | Envelope[ClusterUpdated]) -> ClusterAsk:
        data = event.data
        return cls(event.cluster_id, data.uid, data.generation, data.spec, event)


@dataclass(frozen=True)
class Scheduled:
    reservation: Reservation


@dataclass(frozen=True)
class Stale:
    """The ask is older than what the ledger holds: nothing to do."""

    detail: str


Outcome = Scheduled | Unschedulable | Stale


class Scheduler:
    def __init__(
        self,
        inventory: Inventory,
        ledger: Ledger,
        metrics: SchedulerMetrics,
        *,
        synced: tuple[asyncio.Event, ...],
        capacity_grew: asyncio.Event,
        hold_s: float,
        head_protection_s: float,
        commit_attempts: int,
        sync_timeout_s: float,
        clock: Clock,
        placeholders: Placeholders | None = None,
        clusters: WantedClusters | None = None,
    ):
        self._inventory = inventory
        self._ledger = ledger
        self._metrics = metrics
        self._synced = synced
        self._capacity_grew = capacity_grew
        self._hold = timedelta(seconds=hold_s)
        self._head_protection = timedelta(seconds=head_protection_s)
        self._attempts = commit_attempts
        self._sync_timeout_s = sync_timeout_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._clusters = clusters
        self._placeholders = placeholders  # None: bookings stay in the ledger only
        self._suspects: set[tuple[str, str]] = set()
        self._unbooked_placeholders: set[str] = set()

    async def _wait_synced(self) -> None:
        try:
            async with asyncio.timeout(self._sync_timeout_s):
                for event in self._synced:
                    await event.wait()
        except TimeoutError:
            raise TransientError("the host inventory or the ledger is not loaded yet", reason=Reason.NOT_SYNCED) from None

    # -- placing -----------------------------------------------------------------------------

    async def schedule(self, ask: ClusterAsk, *, trigger: str = "event") -> Outcome:
        """Places the cluster, or records why not and keeps it pending. A retry (trigger "retry")
        leaves the pending entry for the caller to remove once cluster.scheduled is out; an event
        can remove it at once, since a failed publish redelivers the event."""
        await self._wait_synced()
        if self._clusters is not None and not await self._clusters.wanted(ask.cluster_id, ask.uid):
            # Gone or being deleted: its delete chain may have released it already (a redelivered
            # cluster.accepted after it would book a deleted cluster for good).
            async with self._lock:
                pending = self._ledger.pending_for(ask.cluster_id)
                if pending is not None and pending.uid == ask.uid:
                    await self._ledger.delete_pending(ask.cluster_id)
            log.info("Ignoring an ask of a cluster that is gone or being deleted", uid=ask.uid)
            return Stale("the cluster's Vk8s is gone or being deleted")
        async with self._lock:
            for _ in range(self._attempts):
                outcome = await self._try_schedule(ask, forget_pending=trigger == "event")
                if isinstance(outcome, Scheduled):
                    self._metrics.scheduled.labels(trigger).inc()
                elif isinstance(outcome, Stale):
                    log.info("Ignoring a request older than the ledger", detail=outcome.detail)
                if outcome is not None:
                    return outcome
        raise TransientError(
            f"other requests took the capacity {self._attempts} times in a row; trying again", reason=Reason.LOST_RACES
        )

    async def _try_schedule(self, ask: ClusterAsk, *, forget_pending: bool) -> Outcome | None:
        """One attempt; None when the ledger changed under it and it is worth another."""
        current, revision = await self._ledger.reservation(ask.cluster_id)
        verdict = plan_for_ask(ask.uid, ask.generation, ask.cause.time, self._ledger.pending_for(ask.cluster_id), current)
        if verdict.action is AskAction.STALE:
            return Stale(verdict.detail)
        # DROP_EARLIER and REBOOK come only with a reservation; the checks of `current` narrow its type.
        if verdict.action is AskAction.DROP_EARLIER and current is not None:
            log.warning("Dropping the reservation of an earlier cluster of the same name", earlier_uid=current.uid)
            await self._drop(current, revision)
            return None
        if verdict.action is AskAction.REBOOK and current is not None:
            if current.asked_at is None or ask.cause.time > current.asked_at:
                # A resume asked while a pause was still in flight: that pause's answer must not
                # release this placement (see pause), so the placement says when it was last asked.
                asked = current.model_copy(update={"asked_at": ask.cause.time})
                if (written := await self._ledger.put_reservation(asked, revision)) is None:
                    return None
                current, revision = asked, written
            if await self._book(current, previous=None):
                await self._hold_places(current, previous=None)
                if forget_pending:
                    await self._ledger.delete_pending(ask.cluster_id)
                return Scheduled(current)
            await self._drop(current, revision)
            return None

        request, kept = plan(ask.cluster_id, ask.uid, ask.spec, current, self._inventory)
        now = self._clock()
        head = self._head_waiting(ask.cluster_id, now)
        if head is not None:
            request = dataclasses.replace(request, excluded=head[1])
        started = time.perf_counter()
        decision = place(request, self._inventory) if request.vnodes else Placement(())
        self._metrics.placement_seconds.observe(time.perf_counter() - started)
        if (
            isinstance(decision, Unschedulable)
            and head is not None
            and isinstance(place(dataclasses.replace(request, excluded=frozenset()), self._inventory), Placement)
        ):
            decision = behind_head(decision, head[0].cluster_id, head[0].since, head[1])
        if isinstance(decision, Unschedulable):
            await self._remember(ask, decision, now)
            return decision

        reservation = reservation_for(
            ask.cluster_id, ask.uid, ask.generation, ask.spec, kept, decision, now=now, asked_at=ask.cause.time, hold=self._hold
        )
        written = await self._ledger.put_reservation(reservation, revision)
        if written is None:
            return None
        if not await self._book(reservation, previous=current):
            # Another request took some of that room first: put things back, decide again.
            self._metrics.lost_races.inc()
            if current is not None:
                await self._ledger.put_reservation(current, written)
            else:
                await self._ledger.delete_reservation(ask.cluster_id, written)
            return None
        await self._hold_places(reservation, previous=current)
        if forget_pending:
            await self._ledger.delete_pending(ask.cluster_id)
        log.info(
            "Placed cluster",
            generation=ask.generation,
            hosts={v.vnode: v.host_node for v in reservation.vnodes},
            kept=len(kept),
        )
        return Scheduled(reservation)

    def _head_waiting(self, asking: str, now: datetime) -> tuple[PendingCluster, frozenset[str]] | None:
        """The head of the pending queue, if it waited long enough and is another cluster, and the
        nodes kept for it."""
        head = head_of_queue(self._ledger.pending(), now, self._head_protection)
        if head is None or head.cluster_id == asking:
            return None
        try:
            spec = ClusterAsk.from_event(REGISTRY.decode(head.subject, head.event.encode())).spec
        except InvalidEvent:
            return None  # dropped by the next retry, which says why
        previous = next(
            (r for r in self._ledger.reservations() if r.cluster_id == head.cluster_id and r.uid == head.uid), None
        )
        request, _ = plan(head.cluster_id, head.uid, spec, previous, self._inventory)
        return head, nodes_awaited(request, self._inventory)

    async def _book(self, reservation: Reservation, previous: Reservation | None) -> bool:
        """Books the reservation's vNodes, replacing the bookings of `previous`; all or none."""
        before = previous if previous is not None and previous.uid == reservation.uid else None
        nodes = sorted(reservation.hosts() | (before.hosts() if before else set()))
        done: list[str] = []
        for node in nodes:
            if not await self._ledger.replace_bookings(
                node, reservation.uid, reservation.bookings_on(node), admit=True
            ):
                log.info("Lost the room on a host node to another request", node=node)
                for undo in done:
                    restored = before.bookings_on(undo) if before else {}
                    await self._ledger.replace_bookings(undo, reservation.uid, restored, admit=False)
                return False
            done.append(node)
        return True

    async def _unbook(self, reservation: Reservation, keep: Reservation | None = None) -> None:
        for node in sorted(reservation.hosts()):
            remaining = keep.bookings_on(node) if keep is not None else {}
            await self._ledger.replace_bookings(node, reservation.uid, remaining, admit=False)
        kept = {v.vnode for v in keep.active()} if keep is not None else set()
        await self._release_places(reservation, [v.vnode for v in reservation.active() if v.vnode not in kept])
        self._capacity_grew.set()

    async def _hold_places(self, reservation: Reservation, previous: Reservation | None) -> None:
        """Placeholder pods for the booked vNodes not running yet; those of vNodes the cluster no
        longer has go."""
        if self._placeholders is None:
            return
        for vnode in placeholders_wanted(reservation, self._inventory):
            await self._placeholders.hold(reservation, vnode)
        if previous is not None and previous.uid == reservation.uid:
            wanted = {v.vnode for v in reservation.vnodes}
            await self._release_places(previous, [v.vnode for v in previous.vnodes if v.vnode not in wanted])

    async def _release_places(self, reservation: Reservation, vnodes: list[str]) -> None:
        if self._placeholders is None:
            return
        for vnode in vnodes:
            await self._placeholders.release(reservation.cluster_id, (reservation.uid, vnode))

    async def _drop(self, reservation: Reservation, revision: int) -> bool:
        await self._unbook(reservation)
        return await self._ledger.delete_reservation(reservation.cluster_id, revision)

    async def _remember(self, ask: ClusterAsk, decision: Unschedulable, now: datetime) -> None:
        existing = self._ledger.pending_for(ask.cluster_id)
        same_cluster = existing is not None and existing.uid == ask.uid
        if same_cluster and existing is not None and existing.generation == ask.generation and existing.message == decision.message:
            return
        for reason in decision.reasons:
            self._metrics.unschedulable.labels(reason.code).inc()
        log.info("Cluster does not fit now; waiting for capacity", reasons={r.vnode: r.text for r in decision.reasons})
        await self._ledger.put_pending(
            PendingCluster(
                cluster_id=ask.cluster_id,
                uid=ask.uid,
                generation=ask.generation,
                since=existing.since if same_cluster and existing is not None else now,
                message=decision.message,
                subject=ask.cause.type,
                event=ask.cause.to_json().decode(),
            )
        )

    # -- the rest of a cluster's life --------------------------------------------------------

    async def _change(
        self,
        cluster_id: str,
        change: Callable[[Reservation, int], Awaitable[bool]],
        *,
        forget: Callable[[PendingCluster], bool] = lambda _: False,
    ) -> None:
        """Applies `change` to the cluster's reservation until it is not raced (False: raced).
        First drops the cluster's pending entry if `forget` says so, under the same lock as the
        retries, so a retry cannot place what this is about to stop."""
        await self._wait_synced()
        async with self._lock:
            pending = self._ledger.pending_for(cluster_id)
            if pending is not None and forget(pending):
                await self._ledger.delete_pending(cluster_id)
            for _ in range(self._attempts):
                current, revision = await self._ledger.reservation(cluster_id)
                if current is None or await change(current, revision):
                    return
        raise TransientError("the cluster's reservation kept changing; trying again", reason=Reason.LOST_RACES)

    async def pause(self, cluster_id: str, generation: int, at: datetime, asked_at: datetime | None = None) -> None:
        """Releases the bookings and keeps the placements, to bring vNodes back where their disks are.
        `at` is when the pause happened, `asked_at` when it was asked: a pause older than the
        placement (delivered again after the cluster was resumed), or asked before the placement
        was (a resume asked while the vNodes were still stopping), is about an earlier placement."""

        async def change(current: Reservation, revision: int) -> bool:
            if current.state is ReservationState.PAUSED or current.generation > generation or at < current.placed_at:
                return True
            if asked_at is not None and current.asked_at is not None and asked_at < current.asked_at:
                return True
            await self._unbook(current)
            paused = current.model_copy(update={"state": ReservationState.PAUSED, "expires_at": None})
            if await self._ledger.put_reservation(paused, revision) is None:
                return False
            log.info("Released the GPUs of a paused cluster", gpus=sum(v.gpus for v in current.vnodes))
            return True

        await self._change(cluster_id, change, forget=lambda pending: pending.generation <= generation)

    async def confirm(self, cluster_id: str, generation: int, vnodes: list[str]) -> None:
        async def change(current: Reservation, revision: int) -> bool:
            if current.generation != generation or current.state is not ReservationState.HELD:
                log.info(
                    "Nothing to confirm", reservation_generation=current.generation, state=current.state.value
                )
                return True
            confirmed = current.confirm(vnodes)
            if await self._ledger.put_reservation(confirmed, revision) is None:
                return False
            log.info("Confirmed reservation", state=confirmed.state.value)
            return True

        await self._change(cluster_id, change)

    async def fail(self, cluster_id: str, generation: int | None, at: datetime) -> None:
        """A stage gave up on the cluster: its bookings go back (its pods, if any, still count). A
        paused cluster books nothing and keeps its placements, so a resume still finds its volumes."""

        async def change(current: Reservation, revision: int) -> bool:
            if (generation is not None and generation < current.generation) or at < current.placed_at:
                return True
            if current.state is ReservationState.PAUSED:
                return True
            if not await self._drop(current, revision):
                return False
            log.info("Released the reservation of a failed cluster", generation=current.generation)
            return True

        await self._change(
            cluster_id, change, forget=lambda pending: generation is None or pending.generation <= generation
        )

    async def release(self, cluster_id: str, uid: str) -> None:
        """The end of the delete chain: everything the cluster held goes back."""

        async def change(current: Reservation, revision: int) -> bool:
            if current.uid != uid:
                return True
            if not await self._drop(current, revision):
                return False
            log.info("Released the reservation of a deleted cluster")
            return True

        await self._change(cluster_id, change, forget=lambda pending: pending.uid == uid)

    async def forget_unplaced(self, cluster_id: str, generation: int) -> None:
        """A paused cluster stops waiting for capacity; what it holds goes back on cluster.paused."""

        async def unchanged(current: Reservation, revision: int) -> bool:
            return True

        await self._change(cluster_id, unchanged, forget=lambda pending: pending.generation <= generation)

    # -- background work ---------------------------------------------------------------------

    async def run_retries(self, publish: Publish, *, interval_s: float, debounce_s: float) -> None:
        """Places pending clusters again whenever capacity may have grown, and every interval_s."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self._capacity_grew.wait()
            self._capacity_grew.clear()
            if not self._ledger.pending():
                continue
            await asyncio.sleep(debounce_s)
            await self.retry_pending(publish)

    async def retry_pending(self, publish: Publish) -> None:
        for entry in sorted(self._ledger.pending(), key=lambda p: (p.since, p.cluster_id)):
            with structlog.contextvars.bound_contextvars(cluster_id=entry.cluster_id, generation=entry.generation):
                try:
                    await self._retry(entry, publish)
                except InvalidEvent as invalid:
                    log.error("Dropping a pending cluster whose request no longer decodes", error=str(invalid))
                    await self._ledger.delete_pending(entry.cluster_id)
                except Exception:  # the next retry tries again; one cluster must not stop the rest
                    log.exception("Retrying a pending cluster failed")

    async def _retry(self, entry: PendingCluster, publish: Publish) -> None:
        cause = REGISTRY.decode(entry.subject, entry.event.encode())
        outcome = await self.schedule(ClusterAsk.from_event(cause), trigger="retry")
        now = self._clock()
        if isinstance(outcome, Scheduled):
            await publish(scheduled_event(cause, outcome.reservation, now))
            await self._ledger.delete_pending(entry.cluster_id)
        elif isinstance(outcome, Unschedulable) and outcome.message != entry.message:
            await publish(unschedulable_event(cause, entry.generation, outcome, now))
        elif isinstance(outcome, Stale):  # a newer generation was placed meanwhile
            await self._ledger.delete_pending(entry.cluster_id)

    async def run_sweeps(self, *, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except Exception:  # a sweep that fails is simply done again next time
                log.exception("Sweeping the ledger failed")

    async def sweep(self) -> None:
        """Releases holds past their expiry, and repairs bookings and placeholders a crash left out of line."""
        await self._wait_synced()
        now = self._clock()
        for reservation in self._ledger.reservations():
            if reservation.expired(now):
                with structlog.contextvars.bound_contextvars(cluster_id=reservation.cluster_id):
                    await self._expire(reservation.cluster_id, now)
        await self._repair()
        await self._release_unbooked_placeholders()

    async def _expire(self, cluster_id: str, now: datetime) -> None:
        async def change(current: Reservation, revision: int) -> bool:
            if not current.expired(now):
                return True
            remaining = current.without_unconfirmed()
            await self._unbook(current, keep=remaining)
            if remaining is None:
                done = await self._ledger.delete_reservation(cluster_id, revision)
            else:
                done = await self._ledger.put_reservation(remaining, revision) is not None
            if done:
                self._metrics.expired.inc()
                log.warning(
                    "Released a reservation the vNode stage never confirmed",
                    generation=current.generation,
                    released=[v.vnode for v in current.vnodes if not v.confirmed],
                )
            return done

        await self._change(cluster_id, change)

    async def _release_unbooked_placeholders(self) -> None:
        """Placeholders whose booking is gone in two sweeps in a row (left by a crash between the
        two): released, so neither their room nor their finalizer stays behind."""
        if self._placeholders is None:
            return
        unbooked = self._inventory.unbooked_placeholders()
        for key in sorted(unbooked.keys() & self._unbooked_placeholders):
            namespace, name = key.split("/", 1)
            await self._placeholders.release_pod(namespace, name, unbooked[key][0])
        self._unbooked_placeholders = set(unbooked)

    async def _repair(self) -> None:
        """Bookings must be what their reservation lists. A difference seen in two sweeps in a row
        is not a write in flight but a crash's leftover, and is fixed from a fresh read."""
        expected: dict[tuple[str, str], dict[BookingKey, Any]] = {}
        owners: dict[str, str] = {}
        for reservation in self._ledger.reservations():
            owners[reservation.uid] = reservation.cluster_id
            for node in reservation.hosts():
                expected[(node, reservation.uid)] = reservation.bookings_on(node)
        actual: dict[tuple[str, str], dict[BookingKey, Any]] = {}
        for node in self._inventory.booked_nodes():
            for key, booking in self._inventory.bookings_on(node).items():
                actual.setdefault((node, booking.uid), {})[key] = booking
                owners.setdefault(booking.uid, booking.cluster_id)
        differing = {k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k)}
        confirmed, self._suspects = differing & self._suspects, differing
        if not confirmed:
            return
        async with self._lock:
            for node, uid in sorted(confirmed):
                owner, _ = await self._ledger.reservation(owners[uid])
                listed = owner.bookings_on(node) if owner is not None and owner.uid == uid else {}
                if await self._ledger.replace_bookings(node, uid, listed, admit=True):
                    self._metrics.repaired.inc()
                    log.warning("Repaired bookings left out of line", node=node, cluster_id=owners[uid])

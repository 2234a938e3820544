"""The reservation ledger: a NATS JetStream KV bucket every scheduler replica shares.

Keys (a cluster id `<namespace>/<name>` is written `<namespace>.<name>`):
    clusters.<namespace>.<name>   the cluster's Reservation
    pending.<namespace>.<name>    a PendingCluster: did not fit, retried when capacity grows
    nodes.<node>                  the bookings held on that host node

Every write of a reservation or of a node's bookings is compare-and-set on the revision that was
read (kv.update with last=revision), so two schedulers deciding from the same view can never
both book the last GPUs of a node: the second write fails, reads again and checks again.
A watch on the whole bucket keeps this replica's cache, and the Inventory's bookings, current.

Crash safety rests on one order: a reservation is written before its bookings, and bookings are
removed before their reservation, so every booking is listed by its cluster's reservation except
for a moment; the scheduler's sweep repairs whatever a crash leaves in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from libs.events import ensure_kv
from services.scheduler.logic import Booking, BookingKey, Inventory, PendingCluster, Reservation, Resources

log = structlog.get_logger(__name__)

CLUSTERS = "clusters"
PENDING = "pending"
NODES = "nodes"
KEY_KINDS = (CLUSTERS, PENDING, NODES)
# JetStream's "wrong last sequence" error codes, which a delete with `last` reports as a plain APIError.
_WRONG_LAST_SEQUENCE = (10071, 10164)


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


class _BookedVNode(_Wire):
    uid: str
    cluster_id: str
    vnode: str
    gpus: int = Field(ge=0)
    cpu_millis: int = Field(ge=0)
    memory_bytes: int = Field(ge=0)
    pods: int = Field(ge=0)


class _NodeBookings(_Wire):
    bookings: tuple[_BookedVNode, ...] = ()


def encode_bookings(bookings: Mapping[BookingKey, Booking]) -> bytes:
    document = _NodeBookings(
        bookings=tuple(
            _BookedVNode(
                uid=b.uid,
                cluster_id=b.cluster_id,
                vnode=b.vnode,
                gpus=b.resources.gpus,
                cpu_millis=b.resources.cpu_millis,
                memory_bytes=b.resources.memory_bytes,
                pods=b.resources.pods,
            )
            for _, b in sorted(bookings.items())
        )
    )
    return document.model_dump_json(by_alias=True).encode()


def decode_bookings(raw: bytes | None) -> dict[BookingKey, Booking]:
    if not raw:
        return {}
    document = _NodeBookings.model_validate_json(raw)
    return {
        (b.uid, b.vnode): Booking(b.uid, b.cluster_id, b.vnode, Resources(b.gpus, b.cpu_millis, b.memory_bytes, b.pods))
        for b in document.bookings
    }


def cluster_key(kind: str, cluster_id: str) -> str:
    return f"{kind}.{cluster_id.replace('/', '.')}"


def node_key(node: str) -> str:
    return f"{NODES}.{node}"


class Ledger:
    """Reads go to the bucket when a decision depends on them; the cache serves everything else."""

    def __init__(
        self,
        kv: KeyValue,
        inventory: Inventory,
        *,
        on_growth: Callable[[], None],
        on_conflict: Callable[[str], None],
    ):
        self._kv = kv
        self._inventory = inventory
        self._on_growth = on_growth
        self._on_conflict = on_conflict
        self._reservations: dict[str, Reservation] = {}
        self._pending: dict[str, PendingCluster] = {}
        self._revisions: dict[str, int] = {}
        self.synced = asyncio.Event()

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        bucket: str,
        inventory: Inventory,
        *,
        replicas: int = 1,
        on_growth: Callable[[], None],
        on_conflict: Callable[[str], None],
    ) -> Ledger:
        kv = await ensure_kv(js, bucket, history=1, replicas=replicas)
        return cls(kv, inventory, on_growth=on_growth, on_conflict=on_conflict)

    async def watch(self) -> None:
        """Applies every change of the bucket, ours included; runs as a service task."""
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the initial values are all in
                    if not self.synced.is_set():
                        log.info(
                            "Loaded reservation ledger",
                            reservations=len(self._reservations),
                            pending=len(self._pending),
                        )
                    self.synced.set()
                    continue
                value = entry.value if entry.operation is None else None
                self._apply(entry.key, value, entry.revision or 0)
        finally:
            await watcher.stop()

    def _apply(self, key: str, value: bytes | None, revision: int) -> None:
        if revision <= self._revisions.get(key, 0):
            return  # the echo of a write this replica has applied already, or older
        self._revisions[key] = revision
        kind, _, rest = key.partition(".")
        try:
            if kind == NODES:
                if self._inventory.set_bookings(rest, decode_bookings(value)):
                    self._on_growth()
            elif kind == CLUSTERS:
                cluster_id = rest.replace(".", "/", 1)
                if value:
                    self._reservations[cluster_id] = Reservation.model_validate_json(value)
                else:
                    self._reservations.pop(cluster_id, None)
            elif kind == PENDING:
                cluster_id = rest.replace(".", "/", 1)
                if value:
                    self._pending[cluster_id] = PendingCluster.model_validate_json(value)
                else:
                    self._pending.pop(cluster_id, None)
        except ValidationError as error:
            log.error("Ignoring a malformed ledger entry", key=key, revision=revision, error=str(error)[:500])

    async def _read(self, key: str) -> tuple[bytes | None, int]:
        """The key's value (None when absent or deleted) and the revision to compare-and-set on."""
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError as missing:
            revision = (missing.entry.revision if missing.entry is not None else 0) or 0
            self._apply(key, None, revision)
            return None, revision
        self._apply(key, entry.value, entry.revision or 0)
        return entry.value, entry.revision or 0

    async def _write(self, key: str, value: bytes, last: int) -> int | None:
        """Writes if the key is still at revision `last` (0: absent); None when it is not."""
        try:
            revision = await self._kv.update(key, value, last=last)
        except nats.js.errors.KeyWrongLastSequenceError:
            self._on_conflict(key.partition(".")[0])
            return None
        self._apply(key, value, revision)
        return revision

    async def _delete(self, key: str, last: int) -> bool:
        if not last:
            return True
        try:
            await self._kv.delete(key, last=last)
        except nats.js.errors.APIError as error:
            if error.err_code in _WRONG_LAST_SEQUENCE:
                self._on_conflict(key.partition(".")[0])
                return False
            raise
        self._apply_deleted(key, last)
        return True

    def _apply_deleted(self, key: str, last: int) -> None:
        # A delete does not return the marker's revision. It is above `last`, and for a
        # conditional delete no other write of this key lies in between, so last + 1 orders it.
        self._apply(key, None, last + 1)

    # -- reservations ------------------------------------------------------------------------

    async def reservation(self, cluster_id: str) -> tuple[Reservation | None, int]:
        raw, revision = await self._read(cluster_key(CLUSTERS, cluster_id))
        return (Reservation.model_validate_json(raw) if raw else None), revision

    async def put_reservation(self, reservation: Reservation, last: int) -> int | None:
        key = cluster_key(CLUSTERS, reservation.cluster_id)
        return await self._write(key, reservation.model_dump_json(by_alias=True).encode(), last)

    async def delete_reservation(self, cluster_id: str, last: int) -> bool:
        return await self._delete(cluster_key(CLUSTERS, cluster_id), last)

    def reservations(self) -> list[Reservation]:
        return list(self._reservations.values())

    # -- pending clusters --------------------------------------------------------------------

    def pending(self) -> list[PendingCluster]:
        return list(self._pending.values())

    def pending_for(self, cluster_id: str) -> PendingCluster | None:
        return self._pending.get(cluster_id)

    async def put_pending(self, entry: PendingCluster) -> None:
        # Last writer wins: a stale entry only costs a retry that finds the cluster placed.
        key = cluster_key(PENDING, entry.cluster_id)
        value = entry.model_dump_json(by_alias=True).encode()
        revision = await self._kv.put(key, value)
        self._apply(key, value, revision)

    async def delete_pending(self, cluster_id: str) -> None:
        key = cluster_key(PENDING, cluster_id)
        if cluster_id in self._pending:
            await self._kv.delete(key)
            self._apply_deleted(key, self._revisions.get(key, 0))

    # -- bookings ----------------------------------------------------------------------------

    async def replace_bookings(
        self, node: str, uid: str, bookings: Mapping[BookingKey, Booking], *, admit: bool
    ) -> bool:
        """Makes `bookings` the cluster `uid`'s bookings on `node`. With `admit`, only if the node
        has room for them given everything else booked and running there; False when it has not."""
        key = node_key(node)
        while True:
            raw, revision = await self._read(key)
            current = decode_bookings(raw)
            after = {k: b for k, b in current.items() if b.uid != uid} | dict(bookings)
            if after == current:
                return True
            if admit and not self._inventory.admits(node, after, uid):
                return False
            if await self._write(key, encode_bookings(after), revision) is not None:
                return True

"""The ipmanager's state in a NATS JetStream KV bucket; every write is a compare-and-set.

Keys (see services/ipmanager/records.py for the values):
    networks          the network table
    cluster.<uid>     a cluster's index of vNode addresses
    ip.<a-b-c-d>      the claim of one vNode address
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Generic, TypeVar

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.ipmanager.records import ClusterRecord, IpClaim, NetworkTable, Record

NETWORKS_KEY = "networks"
CLUSTER_PREFIX = "cluster."
IP_PREFIX = "ip."
# JetStream's "wrong last sequence" error codes: the key changed since it was read.
_WRONG_LAST_SEQUENCE = (10071, 10164)

R = TypeVar("R", bound=Record)


class RevisionConflict(Exception):
    """The key changed since it was read (or already exists, for a create): read again and retry."""


@dataclass(frozen=True)
class Versioned(Generic[R]):
    """A value as read, with the revision a compare-and-set write or delete must name."""

    value: R
    revision: int


def ip_key(address: IPv4Address) -> str:
    return IP_PREFIX + str(address).replace(".", "-")


def cluster_key(uid: str) -> str:
    return CLUSTER_PREFIX + uid


class KvStore:
    def __init__(self, kv: KeyValue, *, scan_timeout_s: float = 5.0):
        self._kv = kv
        self._scan_timeout = scan_timeout_s
        # The network table is read on every claim; parsing it again when its revision is the one
        # last seen (often the one this process wrote) would dominate the cost of a claim.
        self._last_table: Versioned[NetworkTable] | None = None

    async def network_table(self) -> Versioned[NetworkTable] | None:
        try:
            entry = await self._kv.get(NETWORKS_KEY)
        except KeyNotFoundError:
            return None
        if self._last_table is None or entry.revision != self._last_table.revision:
            self._last_table = Versioned(NetworkTable.model_validate_json(entry.value or b""), entry.revision or 0)
        return self._last_table

    async def networks(self) -> NetworkTable:
        """The network table for reading only (empty before the first claim)."""
        table = await self.network_table()
        return table.value if table is not None else NetworkTable()

    async def put_network_table(self, table: NetworkTable, revision: int | None) -> int:
        """Writes the table read at `revision` (None: there was none yet)."""
        written = await self._put(NETWORKS_KEY, table, revision)
        self._last_table = Versioned(table, written)
        return written

    async def cluster_record(self, uid: str) -> Versioned[ClusterRecord] | None:
        return await self._get(cluster_key(uid), ClusterRecord)

    async def cluster_records(self) -> dict[str, Versioned[ClusterRecord]]:
        records = {}
        for key, value, revision in await self._scan(CLUSTER_PREFIX):
            record = ClusterRecord.model_validate_json(value)
            records[key.removeprefix(CLUSTER_PREFIX)] = Versioned(record, revision)
        return records

    async def put_cluster_record(self, record: ClusterRecord, revision: int | None) -> int:
        return await self._put(cluster_key(record.uid), record, revision)

    async def delete_cluster_record(self, uid: str) -> None:
        await self._kv.delete(cluster_key(uid))

    async def ip_claims(self) -> dict[IPv4Address, Versioned[IpClaim]]:
        claims = {}
        for key, value, revision in await self._scan(IP_PREFIX):
            address = IPv4Address(key.removeprefix(IP_PREFIX).replace("-", "."))
            claims[address] = Versioned(IpClaim.model_validate_json(value), revision)
        return claims

    async def ip_claim(self, address: IPv4Address) -> Versioned[IpClaim] | None:
        return await self._get(ip_key(address), IpClaim)

    async def create_ip_claim(self, address: IPv4Address, claim: IpClaim) -> int:
        """Claims the address for its owner in one write; RevisionConflict if it is claimed already."""
        return await self._put(ip_key(address), claim, None)

    async def delete_ip_claim(self, address: IPv4Address, revision: int) -> bool:
        """Releases the claim read at `revision`; False if it changed since (nothing is deleted)."""
        try:
            await self._kv.delete(ip_key(address), last=revision)
        except APIError as error:
            if error.err_code in _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def _get(self, key: str, model: type[R]) -> Versioned[R] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return Versioned(model.model_validate_json(entry.value or b""), entry.revision or 0)

    async def _put(self, key: str, value: Record, revision: int | None) -> int:
        try:
            if revision is None:
                return await self._kv.create(key, value.to_json())
            return await self._kv.update(key, value.to_json(), last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError) as error:
            # KeyNotFoundError: a create found a delete marker that was purged before it could update it.
            raise RevisionConflict(f"{key} changed since it was read") from error

    async def _scan(self, prefix: str) -> list[tuple[str, bytes, int]]:
        """The current value of every key under `prefix`, read in one pass over the bucket."""
        found = await self._scan_once(prefix)
        # nats-py's watcher can signal "no values" before delivering any when the server pushed
        # them all before its first look (seen under load): an empty answer over a bucket that
        # holds messages is read again (still empty then: only delete markers are left).
        for _ in range(2):
            if found or (await self._kv.status()).values == 0:
                break
            found = await self._scan_once(prefix)
        return found

    async def _scan_once(self, prefix: str) -> list[tuple[str, bytes, int]]:
        watcher = await self._kv.watch(f"{prefix}>", ignore_deletes=True)
        found = []
        try:
            while (entry := await watcher.updates(timeout=self._scan_timeout)) is not None:
                found.append((entry.key, entry.value or b"", entry.revision or 0))
        finally:
            await watcher.stop()
        return found

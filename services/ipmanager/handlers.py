"""Event handlers: decode what the allocator needs, map its outcomes to the consumer wrapper's
PermanentError (cluster.failed) / TransientError (retry with backoff), build the result events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from libs.events import Envelope, PermanentError, Reason, TransientError, declare, subscriber, utc_now
from libs.events.catalog import (
    ClusterAccepted,
    ClusterIPsAllocated,
    ClusterIPsReleased,
    ClusterScheduled,
    ClusterUpdated,
    ClusterVNodesDeleted,
)
from services.ipmanager.allocator import Allocator, Contention, NetworkNotClaimed, StaleAllocation
from services.ipmanager.logic import (
    ClusterReleased,
    NetworkConflict,
    NetworkImmutable,
    NetworkRequest,
    PoolExhausted,
    valid_uid,
)
from services.ipmanager.settings import IpManagerSettings

log = structlog.get_logger(__name__)

Result = list[Envelope[Any]]


class IpManagerHandlers:
    def __init__(self, *, allocator: Allocator, clock: Callable[[], datetime] = utc_now):
        self._allocator = allocator
        self._clock = clock

    @subscriber(ClusterAccepted, ClusterUpdated)
    async def spec_changed(self, event: Envelope[ClusterAccepted | ClusterUpdated]) -> Result:
        """Claims the cluster's networks as early as possible, so a bad CIDR fails the cluster now."""
        kubernetes = event.data.spec.kubernetes
        try:
            await self._claim(event, event.data.uid, kubernetes.pod_network_cidr, kubernetes.service_cidr)
        except ClusterReleased as gone:
            log.info("Not claiming networks for a deleted cluster", reason=str(gone))
        return []

    @subscriber(ClusterScheduled, emits=(ClusterIPsAllocated,))
    async def scheduled(self, event: Envelope[ClusterScheduled]) -> Result:
        data = event.data
        try:
            if data.networks is not None and data.uid is not None:
                # Claimed here too (create-or-get), so the addresses need no earlier event's turn.
                await self._claim(event, data.uid, data.networks.pod_network_cidr, data.networks.service_cidr)
            network, addresses = await self._allocator.allocate_vnode_ips(
                event.cluster_id, data.generation, [placement.vnode for placement in data.placements], uid=data.uid
            )
        except (ClusterReleased, StaleAllocation) as nothing_to_do:
            log.info("Not allocating addresses", reason=str(nothing_to_do))
            return []
        except (NetworkNotClaimed, PoolExhausted, Contention) as error:
            raise _retry(error) from error
        allocated = ClusterIPsAllocated(
            generation=data.generation,
            uid=network.uid,
            vnode_ips={vnode: str(address) for vnode, address in addresses.items()},
            pod_cidr=str(network.pod_cidr),
            service_cidr=str(network.service_cidr),
            placements=data.placements,
        )
        return [event.follow(allocated, now=self._clock())]

    async def _claim(self, event: Envelope[Any], uid: str, pod_network_cidr: str, service_cidr: str) -> None:
        """The cluster's network claim of this generation, made or found; the errors the wrapper
        acts on."""
        if not valid_uid(uid):
            raise PermanentError(f"uid {uid!r} is not a Kubernetes uid", reason=Reason.INVALID_UID)
        request = NetworkRequest.from_spec(pod_network_cidr, service_cidr)
        try:
            await self._allocator.claim_network(
                uid=uid, cluster_id=event.cluster_id, generation=event.data.generation, request=request
            )
        except NetworkConflict as error:
            raise PermanentError(
                f"{error}; choose ranges that overlap none of these, or leave them out to get free ones",
                reason=Reason.NETWORK_OVERLAP,
            ) from error
        except NetworkImmutable as error:
            raise PermanentError(str(error), reason=Reason.NETWORK_IMMUTABLE) from error
        except (PoolExhausted, Contention) as error:
            raise _retry(error) from error

    @subscriber(ClusterVNodesDeleted, emits=(ClusterIPsReleased,))
    async def vnodes_deleted(self, event: Envelope[ClusterVNodesDeleted]) -> Result:
        released = await self._allocator.release(event.data.uid)
        payload = ClusterIPsReleased(uid=event.data.uid, released=[str(address) for address in released])
        return [event.follow(payload, now=self._clock())]


TOPOLOGY = declare("ipmanager", IpManagerHandlers, kv_bucket=IpManagerSettings.model_fields["kv_bucket"].default)


# Addresses and blocks come free as clusters are deleted; a lost race is won on a later try; a
# missing network (a cluster.scheduled of an earlier version, without `networks`) appears once
# cluster.accepted is handled.
_RETRY_REASONS: dict[type[Exception], Reason] = {
    NetworkNotClaimed: Reason.NETWORK_NOT_CLAIMED,
    PoolExhausted: Reason.POOL_EXHAUSTED,
    Contention: Reason.CONTENTION,
}


def _retry(error: NetworkNotClaimed | PoolExhausted | Contention) -> TransientError:
    return TransientError(str(error), reason=_RETRY_REASONS[type(error)])

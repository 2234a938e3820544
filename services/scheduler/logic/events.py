"""The events the scheduler publishes for a decision."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from libs.events.catalog import (
    AskedNetworks,
    ClusterAccepted,
    ClusterScheduled,
    ClusterUnschedulable,
    ClusterUpdated,
    VNodeUnschedulable,
)
from libs.events.envelope import Envelope
from services.scheduler.logic.placement import Unschedulable
from services.scheduler.logic.records import Reservation


def scheduled_event(
    cause: Envelope[ClusterAccepted] | Envelope[ClusterUpdated], reservation: Reservation, now: datetime
) -> Envelope[ClusterScheduled]:
    # The networks travel on, so the ipmanager needs no earlier event to allocate addresses.
    kubernetes = cause.data.spec.kubernetes
    data = ClusterScheduled(
        generation=reservation.generation,
        placements=reservation.placements(),
        uid=reservation.uid,
        networks=AskedNetworks(pod_network_cidr=kubernetes.pod_network_cidr, service_cidr=kubernetes.service_cidr),
    )
    return cause.follow(data, now=now)


def unschedulable_event(
    cause: Envelope[Any], generation: int, decision: Unschedulable, now: datetime
) -> Envelope[ClusterUnschedulable]:
    data = ClusterUnschedulable(
        generation=generation,
        message=decision.message,
        vnodes=[VNodeUnschedulable(vnode=r.vnode, reason=r.text) for r in decision.reasons],
    )
    # Keyed by the message: a retry that finds a new reason publishes it, the same one is deduplicated.
    return cause.follow(data, now=now, key=hashlib.sha256(decision.message.encode()).hexdigest()[:16])

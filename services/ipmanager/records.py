"""What the ipmanager keeps in its NATS KV bucket (camelCase JSON values).

    networks             NetworkTable   every cluster's pod and service CIDR, one document so that a
                                        single compare-and-set checks overlaps and claims together
    cluster.<uid>        ClusterRecord  the cluster's index: vNode -> address, written before the
                                        address is claimed (an intent until ip.<address> names it)
    ip.<a-b-c-d>         IpClaim        the owner of one vNode address; created with kv.create, so
                                        one write both claims the address and records its owner
"""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, IPvAnyNetwork
from pydantic.alias_generators import to_camel


class Record(BaseModel):
    # Unknown fields are ignored, so a replica of an older version reads what a newer one wrote.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, alias_generator=to_camel)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class NetworkClaim(Record):
    uid: str
    cluster_id: str
    generation: int = Field(ge=1, description="Generation of the spec the claim was made for.")
    pod_cidr: IPvAnyNetwork
    service_cidr: IPvAnyNetwork
    pod_cidr_given: bool
    service_cidr_given: bool
    claimed_at: AwareDatetime


class NetworkTable(Record):
    clusters: dict[str, NetworkClaim] = Field(default_factory=dict, description="By cluster uid.")
    released: dict[str, AwareDatetime] = Field(
        default_factory=dict,
        description="Tombstones: cluster uid -> when its delete chain released it. A claim for one of "
        "them (a cluster.accepted handled after the delete) is refused, in the same compare-and-set.",
    )

    def with_claim(self, claim: NetworkClaim) -> NetworkTable:
        return self.model_copy(update={"clusters": {**self.clusters, claim.uid: claim}})

    def without(self, uid: str) -> NetworkTable:
        return self.model_copy(update={"clusters": {u: c for u, c in self.clusters.items() if u != uid}})

    def with_tombstone(self, uid: str, now: datetime, keep_since: datetime) -> NetworkTable:
        """Marks the cluster released; tombstones older than `keep_since` are dropped (no event
        about them can still arrive)."""
        released = {u: at for u, at in self.released.items() if at >= keep_since}
        return self.model_copy(update={"released": {**released, uid: now}})

    def newest_for(self, cluster_id: str) -> NetworkClaim | None:
        """The claim of the cluster's current object. Kubernetes reuses a name only after the old
        object is gone, so an older uid under the same name is a leftover of a failed deletion."""
        claims = [claim for claim in self.clusters.values() if claim.cluster_id == cluster_id]
        return max(claims, key=lambda claim: claim.claimed_at, default=None)


class ClusterRecord(Record):
    uid: str
    cluster_id: str
    vnodes: dict[str, IPv4Address] = Field(default_factory=dict)
    generation: int = Field(default=0, description="The newest cluster.scheduled whose removed vNodes were released.")


class IpClaim(Record):
    uid: str
    cluster_id: str
    vnode: str
    claimed_at: AwareDatetime

    def owned_by(self, uid: str, vnode: str) -> bool:
        return self.uid == uid and self.vnode == vnode

    def age_s(self, now: datetime) -> float:
        return (now - self.claimed_at).total_seconds()

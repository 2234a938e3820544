"""ipmanager settings: environment variables VK8S_IPMANAGER_<FIELD> (only __main__ reads them).

Lists of networks take a comma-separated string or a JSON list:
`VK8S_IPMANAGER_HOST_NODE_CIDRS=192.168.0.0/16,10.10.0.0/16`.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from typing import Annotated, Any

from pydantic import Field, IPvAnyNetwork, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from libs.runtime import BucketName, BucketOwnerSettings, ReadApiToken
from services.ipmanager.logic import AddressPool, CidrPool, NetworkLayout, Reserved

# Pools are walked block by block (and address by address), so keep them to 2^16 entries.
MAX_POOL_ENTRIES = 1 << 16

Networks = Annotated[tuple[IPvAnyNetwork, ...], NoDecode]


class IpManagerSettings(BucketOwnerSettings):
    model_config = SettingsConfigDict(env_prefix="VK8S_IPMANAGER_", extra="ignore", frozen=True)

    kv_bucket: BucketName = "vk8s-ipmanager"

    vnode_ip_pool: IPv4Network = Field(
        default=IPv4Network("10.250.0.0/22"),
        description="Host pod addresses reserved for vNodes: a Calico IPPool that Calico's own IPAM never "
        "hands out (e.g. nodeSelector '!all()'), so only the ipAddrs annotation assigns them.",
    )
    host_pod_cidrs: Networks = (IPv4Network("10.244.0.0/16"),)
    host_service_cidrs: Networks = (IPv4Network("10.96.0.0/12"),)
    host_node_cidrs: Networks = ()

    pod_cidr_pool: IPv4Network = Field(
        default=IPv4Network("100.64.0.0/10"),
        description="Where pod CIDRs are carved from for clusters that give none.",
    )
    pod_cidr_prefix: int = Field(default=16, ge=8, le=24)
    service_cidr_pool: IPv4Network = Field(
        default=IPv4Network("10.64.0.0/12"),
        description="Where service CIDRs are carved from for clusters that give none.",
    )
    # kube-apiserver refuses IPv4 service ranges larger than /12.
    service_cidr_prefix: int = Field(default=20, ge=12, le=28)

    reconcile_pods: bool = Field(
        default=True,
        description="Judge orphans against live vNode pods. Off where no Kubernetes API is reachable: "
        "the reconcile then only repairs its index and never releases anything.",
    )
    kubeconfig: str | None = Field(default=None, description="None: $KUBECONFIG, else the in-cluster account.")
    read_api_token: ReadApiToken = None
    vnode_pod_selector: str = "app=vk8s"
    reconcile_interval_s: float = Field(default=30.0, gt=0, description="Also how fresh the pool gauges are.")
    orphan_grace_s: float = Field(
        default=900.0,
        ge=0,
        description="An orphaned address is released once its claim is older than this, so an allocation "
        "racing a deletion is never taken back while it is still in flight.",
    )
    tombstone_retention_s: float = Field(
        default=14 * 24 * 3600.0,
        gt=0,
        description="How long a deleted cluster's uid is remembered, refusing late claims for it: the "
        "stream's max age (14 days), the oldest an undelivered event can be. Tombstones share the networks "
        "document (~70 bytes each), so 14 days fit ~1,000 deletions a day under NATS's 1 MiB payload limit.",
    )

    @field_validator("host_pod_cidrs", "host_service_cidrs", "host_node_cidrs", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _check_pools(self) -> IpManagerSettings:
        if self.vnode_ip_pool.num_addresses > MAX_POOL_ENTRIES:
            raise ValueError(f"vnode_ip_pool {self.vnode_ip_pool} is larger than /16")
        for field, pool, prefix in (
            ("pod_cidr", self.pod_cidr_pool, self.pod_cidr_prefix),
            ("service_cidr", self.service_cidr_pool, self.service_cidr_prefix),
        ):
            if prefix < pool.prefixlen:
                raise ValueError(f"{field}_prefix /{prefix} is larger than {field}_pool {pool}")
            if 1 << (prefix - pool.prefixlen) > MAX_POOL_ENTRIES:
                raise ValueError(f"{field}_pool {pool} holds more than {MAX_POOL_ENTRIES} /{prefix} blocks")
        return self

    def network_layout(self) -> NetworkLayout:
        reserved = [
            *(Reserved("the host pod CIDR", n) for n in self.host_pod_cidrs),
            *(Reserved("the host service CIDR", n) for n in self.host_service_cidrs),
            *(Reserved("the host node network", n) for n in self.host_node_cidrs),
            Reserved("the vNode IP pool", self.vnode_ip_pool),
        ]
        return NetworkLayout(
            reserved=tuple(reserved),
            pod_pool=CidrPool("pod-cidrs", self.pod_cidr_pool, self.pod_cidr_prefix),
            service_pool=CidrPool("service-cidrs", self.service_cidr_pool, self.service_cidr_prefix),
        )

    def address_pool(self) -> AddressPool:
        return AddressPool(self.vnode_ip_pool)

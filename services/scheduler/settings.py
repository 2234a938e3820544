"""scheduler settings: environment variables VK8S_SCHEDULER_<FIELD> (only __main__ reads them)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime import BucketName, BucketOwnerSettings


class SchedulerSettings(BucketOwnerSettings):
    model_config = SettingsConfigDict(env_prefix="VK8S_SCHEDULER_", extra="ignore", frozen=True)

    kubeconfig: str | None = Field(default=None, description="None: $KUBECONFIG, else the in-cluster account.")
    node_selector: str = Field(
        default="",
        description="Label selector of the host nodes vNodes may use (e.g. 'vk8s.skt.co.kr/host=true'); "
        "empty: every node.",
    )

    kv_bucket: BucketName = "vk8s-scheduler"

    hold_s: float = Field(
        default=900.0,
        gt=0,
        description="How long a reservation is held for the vNode stage to confirm it (cluster.vnodes.ready) "
        "before the sweep releases it.",
    )
    sweep_interval_s: float = Field(default=15.0, gt=0)
    retry_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="Pending clusters are retried when capacity grows, and at least this often.",
    )
    retry_debounce_s: float = Field(
        default=0.5, ge=0, description="Wait after a capacity change so a burst of changes costs one retry."
    )
    commit_attempts: int = Field(
        default=8, ge=1, description="Placements tried per request when other schedulers take the capacity first."
    )
    placeholders: bool = Field(
        default=True,
        description="Hold booked resources with placeholder pods (in the cluster's namespace) until the vNode "
        "pod runs, so kube-scheduler cannot give them to other pods.",
    )
    placeholder_image: str = Field(
        default="registry.k8s.io/pause:3.10.2", description="Image of the placeholder pods (it only sleeps)."
    )
    head_protection_s: float = Field(
        default=600.0,
        gt=0,
        description="Once the oldest pending cluster has waited this long, the nodes it waits on are kept "
        "from every other cluster until it is placed (clusters are retried oldest first).",
    )
    sync_timeout_s: float = Field(
        default=30.0, gt=0, description="How long an event waits for the inventory and ledger to be loaded."
    )

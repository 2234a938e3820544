"""Settings of the vnode service, read from VK8S_VNODE_* (nested values as JSON)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator
from pydantic_settings import SettingsConfigDict

from libs.api.images import ImagePolicy
from libs.api.models import Quantity
from libs.api.versions import NodeImageCatalog
from libs.events import Backoff
from libs.runtime import BucketName, BucketOwnerSettings

AbsolutePath = Annotated[str, StringConstraints(pattern=r"^/")]


class VNodeSettings(BucketOwnerSettings):
    model_config = SettingsConfigDict(env_prefix="VK8S_VNODE_", extra="ignore", frozen=True)

    kubeconfig: str | None = Field(default=None, description="Host cluster kubeconfig; in-cluster account when unset.")
    kv_bucket: BucketName = "vk8s-vnode"

    image_catalog: NodeImageCatalog = Field(
        default_factory=NodeImageCatalog, description="vNode image per Kubernetes minor, for nodes without an image."
    )
    image_policy: ImagePolicy = Field(
        default_factory=ImagePolicy,
        description="Repositories a node image named in a spec must come from, and whether it needs a digest.",
    )
    ip_annotation: str = Field(
        default="cni.projectcalico.org/ipAddrs", description="Pod annotation the CNI reads a fixed pod IP from."
    )

    host_dirs: dict[str, AbsolutePath] = Field(
        default_factory=lambda: {"lib-modules": "/lib/modules", "usr-src": "/usr/src"},
        description="Host directories a vNode reads (volume name -> path): kernel modules and headers. "
        "Empty where the hosts have none (kernels with everything built in).",
    )
    storage_class: str | None = Field(default=None, description="Class of the node-state volumes; None: the default.")
    state_volume_size: Quantity = "50Gi"
    node_state_path: AbsolutePath = "/var/lib/vk8s-node"
    node_state_dirs: dict[AbsolutePath, str] = Field(
        default_factory=lambda: {
            "/etc/kubernetes": "kubernetes",
            "/var/lib/kubelet": "kubelet",
            "/var/lib/containerd": "containerd",
            "/var/lib/etcd": "etcd",
        },
        description="vNode directories kept on its volume (mount path -> sub-path): pause/resume keeps the node.",
    )
    retain_volumes: bool = Field(
        default=False, description="Keep node-state volumes when a cluster is deleted (per cluster: annotation)."
    )

    ports_service_type: Literal["NodePort", "LoadBalancer", "ClusterIP"] = Field(
        default="NodePort",
        description="Type of the Service that exposes spec.ports (the Kubeflow UI); its node ports are allocated "
        "by Kubernetes, never chosen by the tenant.",
    )
    network_policy: bool = Field(
        default=True, description="A NetworkPolicy around each cluster's vNodes in its platform namespace."
    )
    network_policy_ingress: list[dict[str, Any]] = Field(
        default_factory=list,
        description="NetworkPolicy ingress rules letting others reach the vNodes besides each other, e.g. the "
        "kubeflow service on 6443 and the Kubeflow UI's clients (the chart sets both).",
    )
    network_policy_egress: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}]}],
        description="NetworkPolicy egress rules besides each other (default: anywhere but the cloud metadata address).",
    )
    access_pod_port: int = Field(default=22, ge=1, le=65535, description="Access pod port when accessPodPort is unset.")
    access_pod_resources: dict[str, dict[str, Quantity]] = Field(
        default_factory=lambda: dict[str, dict[str, Quantity]](
            requests={"cpu": "50m", "memory": "64Mi"}, limits={"memory": "256Mi"}
        )
    )

    ready_timeout_s: float = Field(default=900.0, gt=0, description="How long vNode pods may take to run or stop.")
    resync_interval_s: float = Field(default=10.0, gt=0, description="How often waiting clusters are re-checked.")
    resume_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="How long an allocation for a cluster recorded as paused waits for the resume to be recorded.",
    )

    @model_validator(mode="after")
    def _retries_outlast_the_resume_grace(self) -> VNodeSettings:
        """An allocation waiting for the resume is retried with the consumer's backoff: if its
        max_deliver tries ran out inside the grace, a resume would end in cluster.failed."""
        backoff = Backoff(self.backoff_base_s, self.backoff_max_s)
        waited = sum(backoff.delay(delivery) for delivery in range(1, self.max_deliver))
        if waited <= self.resume_grace_s:
            raise ValueError(
                f"resume_grace_s: {self.resume_grace_s:g} s is not shorter than the {waited:g} s that max_deliver "
                f"({self.max_deliver}) tries with backoff_base_s {self.backoff_base_s:g} / backoff_max_s "
                f"{self.backoff_max_s:g} wait in all; raise max_deliver or the backoff, or lower resume_grace_s"
            )
        return self

"""Gateway settings, from VK8S_GATEWAY_* environment variables."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from libs.api.images import ImagePolicy
from libs.runtime import BucketName, BucketOwnerSettings


class ServiceBinding(BaseModel):
    """A service's rights in a namespace the gateway prepares: its ServiceAccount bound there to this ClusterRole."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str = Field(min_length=1, description="ClusterRole holding the service's rules for such a namespace.")
    service_account: str = Field(min_length=1)
    namespace: str = Field(min_length=1, description="The ServiceAccount's namespace.")


class GatewaySettings(BucketOwnerSettings):
    model_config = SettingsConfigDict(env_prefix="VK8S_GATEWAY_", extra="ignore", frozen=True)

    kubeconfig: str | None = Field(
        default=None, description="kubeconfig file; default $KUBECONFIG, else the pod's service account."
    )
    namespace: str | None = Field(
        default=None, description="Serve the Vk8s objects of this namespace only; default every namespace."
    )
    kv_bucket: BucketName = Field(
        default="vk8s-gateway", description="NATS KV bucket of what the gateway published per cluster uid."
    )
    # The gateway owns the event stream (libs.events.STREAM_OWNER): these configure it.
    stream_replicas: int = Field(default=1, ge=1, le=5, description="Replicas of the event stream.")
    duplicate_window_s: float = Field(
        default=120.0, gt=0, description="How long the event stream remembers a Nats-Msg-Id to drop its repeat."
    )
    host_cidrs: tuple[str, ...] = Field(
        default=(), description="The host cluster's pod and service networks; inner clusters must not overlap them."
    )
    image_policy: ImagePolicy = Field(
        default_factory=ImagePolicy,
        description="Repositories a node image named in a spec must come from, and whether it needs a digest.",
    )
    platform_bindings: tuple[ServiceBinding, ...] = Field(
        default=(),
        description="RoleBindings made in each platform namespace the gateway creates (the chart's platform roles); "
        "they go with the namespace.",
    )
    tenant_bindings: tuple[ServiceBinding, ...] = Field(
        default=(),
        description="RoleBindings made in each namespace a Vk8s is served in, before the gateway acts there (the chart's "
        "tenant roles, when it binds them nowhere itself); they stay as long as the namespace.",
    )
    reserved_namespaces: tuple[str, ...] = Field(
        default=("kube-system", "kube-public", "kube-node-lease"),
        description="Namespaces no virtual cluster is made in (the host's own; the chart adds its release namespace).",
    )
    max_clusters_per_namespace: int | None = Field(
        default=20, ge=1, description="Clusters the pipeline may hold per namespace; None: no limit."
    )
    max_gpus_per_namespace: int | None = Field(
        default=64, ge=0, description="GPUs the clusters of one namespace may ask for together; None: no limit."
    )
    watch_timeout_s: int = Field(
        default=300, ge=10, description="Each watch lasts this long, then the gateway lists again (a full resync)."
    )
    reconcile_retry_s: float = Field(
        default=0.5, gt=0, description="First delay before an object whose change failed is tried again; it doubles."
    )
    reconcile_retry_max_s: float = Field(
        default=300.0, gt=0, description="Longest delay between tries of one object; it is tried for as long as it fails."
    )
    delete_resync_s: float = Field(
        default=600.0,
        gt=0,
        description="An object still being deleted this long after cluster.delete.requested was published gets "
        "it again (checked at each relist, every watch_timeout_s): a deletion a stage gave up on resumes by itself.",
    )
    nats_request_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="An object made for a request on NATS is that request's to accept: the watch asks for it "
        "only if it is still unrecorded this long after its creation (the request failed for good).",
    )

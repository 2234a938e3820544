"""Projector settings, from VK8S_PROJECTOR_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime import BucketName, BucketOwnerSettings, ReadApiToken


class ProjectorSettings(BucketOwnerSettings):
    model_config = SettingsConfigDict(env_prefix="VK8S_PROJECTOR_", extra="ignore", frozen=True)

    kubeconfig: str | None = Field(default=None, description="Kubeconfig path; in-cluster service account when unset.")
    read_api_token: ReadApiToken = None
    durable: str = "projector"
    kv_bucket: BucketName = "vk8s-clusters"
    cas_attempts: int = Field(default=20, ge=1, description="Read-model writes tried per event before a retry later.")
    status_confirm_attempts: int = Field(default=5, ge=1)
    # Projection errors are not cluster failures: when retries run out the consumer wrapper
    # publishes cluster.failed, so the projector keeps retrying (with backoff) for far longer.
    max_deliver: int = Field(default=10_000, ge=1)
    deleted_retention_s: float = Field(
        default=3600.0, gt=0, description="How long the read model keeps a deleted cluster's record (then the read API forgets it)."
    )
    deleted_sweep_s: float = Field(default=300.0, gt=0, description="How often records past that retention are removed.")

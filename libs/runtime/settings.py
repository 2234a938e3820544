"""Settings every service shares; each service subclasses with its own env prefix (VK8S_<SERVICE>_)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The bearer token of a service's read API (/v1/...): unset, that API answers 401 to everyone.
ReadApiToken = Annotated[
    SecretStr | None,
    Field(description="Bearer token the read API (/v1/...) requires; unset: the read API refuses every request."),
]


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VK8S_", extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_password_file: str | None = Field(
        default=None,
        description="File holding the NATS password (a mounted Secret), read when connecting: the password is then "
        "in no environment variable. Instead of nats_password.",
    )
    nats_creds_file: str | None = Field(default=None, description="NATS .creds file (JWT + NKey).")

    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    consumer_concurrency: int = Field(default=4, ge=1, le=64)
    consumer_prefetch: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Messages fetched ahead of a free handler slot (kept alive while they wait). 0: none wait in "
        "this replica's hands, so another replica can take them; more: throughput for fast handlers.",
    )
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    shutdown_timeout_s: float = Field(default=20.0, gt=0)
    lag_interval_s: float = Field(default=15.0, gt=0, description="How often consumer lag is sampled.")

    @model_validator(mode="after")
    def _one_nats_password(self) -> ServiceSettings:
        if self.nats_password is not None and self.nats_password_file is not None:
            raise ValueError("nats_password and nats_password_file: give one of them, not both")
        return self


# A NATS KV bucket's name (the service subclass gives its default).
BucketName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$")]


class BucketOwnerSettings(ServiceSettings):
    """Settings of a service that keeps its state in a NATS KV bucket of its own (`kv_bucket`)."""

    kv_bucket: BucketName
    kv_replicas: int = Field(
        default=1, ge=1, le=5, description="Replicas of the KV bucket, fixed when it is created (an existing one stays)."
    )

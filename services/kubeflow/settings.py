from __future__ import annotations

from pathlib import Path
from typing import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from libs.runtime import ServiceSettings


class GitSource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    ref: str = Field(description="Tag or branch; pin a tag.")
    path: str = Field(default="example", description="Kustomization inside the repository.")


class ManifestSource(BaseModel):
    """Where one Kubeflow release's manifests come from: exactly one of the three."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    directory: Path | None = Field(default=None, description="Rendered YAML files (a local mirror).")
    kustomize: Path | None = Field(default=None, description="A kustomization directory, built with kubectl.")
    git: GitSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [name for name in ("directory", "kustomize", "git") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a manifest source needs exactly one of directory, kustomize, git; got {given or 'none'}")
        return self


class ManifestSources(BaseModel):
    """Per-release sources, and an optional default for releases not listed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    releases: dict[str, ManifestSource] = Field(default_factory=dict)
    default: ManifestSource | None = None

    def for_release(self, release: str) -> ManifestSource | None:
        return self.releases.get(release, self.default)

    @classmethod
    def load(cls, path: Path) -> ManifestSources:
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})


class KubeflowSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VK8S_KUBEFLOW_", extra="ignore", frozen=True)

    kubeconfig: str | None = Field(default=None, description="Host cluster; in-cluster when unset.")
    sources_file: Path | None = Field(default=None, description="YAML: {releases: {vX.Y.Z: source}, default: source}.")
    apply_rounds: int = Field(default=5, ge=1, le=50, description="Apply rounds before the install fails.")
    round_delay_s: float = Field(default=5.0, ge=0)
    ready_timeout_s: float = Field(default=1800.0, gt=0)
    poll_interval_s: float = Field(default=5.0, gt=0)
    git_cache_dir: Path = Field(default=Path.home() / ".cache/vk8s/kubeflow-manifests")
    kubectl: str = "kubectl"
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    inner_proxy_url: str | None = Field(
        default=None, description="HTTP proxy to the virtual clusters' API servers, when not reachable directly."
    )
    wait_for_available: bool = Field(
        default=True,
        description="Wait until Kubeflow's Deployments are available; off where its images cannot be had "
        "(the stage then ends once applied, naming what is not available).",
    )

    def sources(self) -> ManifestSources:
        return ManifestSources.load(self.sources_file) if self.sources_file else ManifestSources()

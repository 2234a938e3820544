from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime import ServiceSettings


class BootstrapSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VK8S_BOOTSTRAP_", extra="ignore", frozen=True)

    kubeconfig: str | None = Field(default=None, description="Host cluster; in-cluster when unset.")
    vnode_container: str = Field(default="vnode", description="Container of the vNode pod to exec into.")
    step_attempts: int = Field(default=3, ge=1, le=20, description="Tries of one step before the cluster fails.")
    step_backoff_s: float = Field(default=2.0, ge=0, description="Delay before the 2nd try; doubles after.")
    control_plane_timeout_s: int = Field(
        default=240, gt=0, description="How long kubeadm init waits for the control plane to turn healthy."
    )
    nodes_ready_timeout_s: int = Field(
        default=300, gt=0, description="How long the inner nodes may take to turn Ready (with their GPUs) after kubeadm."
    )
    exec_timeout_s: float = Field(default=900.0, gt=0, description="Longest one command may run (kubeadm init).")

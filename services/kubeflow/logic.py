"""Pure decisions of the kubeflow stage: apply order, readiness, the dex user, the Profile and
the UI service. No I/O."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

# Lower applies first: namespaces and CRDs before what lives in them or is of their kinds;
# admission webhooks last, so they cannot reject the objects of their own release.
_KIND_ORDER = {
    "Namespace": 0,
    "CustomResourceDefinition": 1,
    "ServiceAccount": 2,
    "ClusterRole": 2,
    "ClusterRoleBinding": 2,
    "Role": 2,
    "RoleBinding": 2,
    "ConfigMap": 3,
    "Secret": 3,
    "Service": 4,
    "Deployment": 5,
    "StatefulSet": 5,
    "DaemonSet": 5,
    "Job": 5,
    "MutatingWebhookConfiguration": 7,
    "ValidatingWebhookConfiguration": 7,
}
_CUSTOM_RESOURCE_ORDER = 6
WORKLOAD_KINDS = ("Deployment",)


@dataclass(frozen=True, order=True)
class ObjectKey:
    api_version: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return ObjectKey(obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def order_for_apply(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Stable sort by kind order; the manifests' own order is kept within a kind group."""
    return sorted(objects, key=lambda o: _KIND_ORDER.get(o["kind"], _CUSTOM_RESOURCE_ORDER))


def crd_names(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"]


def workloads(objects: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The Deployments of the release: readiness means each is available."""
    return sorted(
        (o["metadata"].get("namespace", "default"), o["metadata"]["name"]) for o in objects if o["kind"] in WORKLOAD_KINDS
    )


def deployment_available(deployment: Mapping[str, Any]) -> bool:
    status = deployment.get("status") or {}
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return conditions.get("Available") == "True" and status.get("availableReplicas", 0) >= wanted


@dataclass(frozen=True)
class Readiness:
    ready: tuple[tuple[str, str], ...]
    waiting: tuple[tuple[str, str], ...]

    @property
    def done(self) -> bool:
        return not self.waiting

    def message(self) -> str:
        if self.done:
            return f"all {len(self.ready)} core deployments available"
        shown = ", ".join(f"{ns}/{name}" for ns, name in self.waiting[:5])
        more = f" and {len(self.waiting) - 5} more" if len(self.waiting) > 5 else ""
        return f"waiting for {shown}{more}"


def readiness(expected: Iterable[tuple[str, str]], observed: Mapping[tuple[str, str], Mapping[str, Any]]) -> Readiness:
    ready: list[tuple[str, str]] = []
    waiting: list[tuple[str, str]] = []
    for key in expected:
        deployment = observed.get(key)
        (ready if deployment is not None and deployment_available(deployment) else waiting).append(key)
    return Readiness(tuple(ready), tuple(waiting))


# Waiting reasons that only say a container is on its way; how long to wait for a real one.
STARTING_REASONS = ("ContainerCreating", "PodInitializing")
SETTLE_S = 60.0


def still_starting(waiting: Iterable[tuple[str, str]], reasons: Mapping[tuple[str, str], str]) -> bool:
    """Whether some Deployment not available has no pod reporting why, or only that it is starting."""
    return any(reasons.get(key, "").split(":", 1)[0] in ("", *STARTING_REASONS) for key in waiting)


def unavailable(waiting: Iterable[tuple[str, str]], reasons: Mapping[tuple[str, str], str]) -> list[str]:
    """`namespace/name: why` for each Deployment not available; why is what its pods report."""
    return [f"{ns}/{name}: {reasons.get((ns, name), 'no pod reports why')}" for ns, name in waiting]


def user_name(email: str) -> str:
    """A DNS-1123 name from an email's local part: the Profile (and namespace) of the user."""
    local = email.split("@", 1)[0].lower()
    name = re.sub(r"[^a-z0-9-]+", "-", local).strip("-")[:63].strip("-")
    return name or "user"


def user_id(email: str) -> str:
    """dex's stable userID for an email."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{email.lower()}"))


def dex_config_with_user(config_yaml: str, *, email: str, password_hash: str, user_id: str) -> str:
    """dex's config.yaml with this user as the static password entry for its email."""
    config = yaml.safe_load(config_yaml) or {}
    entry = {"email": email, "hash": password_hash, "username": user_name(email), "userID": user_id}
    others = [p for p in config.get("staticPasswords") or [] if p.get("email") != email]
    config["enablePasswordDB"] = True
    config["staticPasswords"] = [*others, entry]
    return yaml.safe_dump(config, sort_keys=False)


def current_hash(config_yaml: str, email: str) -> str | None:
    config = yaml.safe_load(config_yaml) or {}
    for entry in config.get("staticPasswords") or []:
        if entry.get("email") == email:
            hashed: str | None = entry.get("hash")
            return hashed
    return None


def profile_for(email: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Profile",
        "metadata": {"name": user_name(email)},
        "spec": {"owner": {"kind": "User", "name": email}},
    }


UI_SERVICE_NAME = "vk8s-kubeflow-ui"


def ui_service(node_port: int) -> dict[str, Any]:
    """The Kubeflow UI (the ingress gateway) on a fixed NodePort of the inner cluster; the host's
    NodePort Service for the `kubeflow` port forwards to it."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": UI_SERVICE_NAME, "namespace": "istio-system", "labels": {"app.kubernetes.io/managed-by": "vk8s"}},
        "spec": {
            "type": "NodePort",
            "selector": {"app": "istio-ingressgateway", "istio": "ingressgateway"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": node_port}],
        },
    }


def ui_node_port(ports: Iterable[Any]) -> int | None:
    """The inner NodePort of the UI: the target port of the spec's port named `kubeflow`."""
    for port in ports:
        if port.name == "kubeflow":
            target = port.target_port if isinstance(port.target_port, int) else port.port
            return target if 30000 <= target <= 32767 else None
    return None

"""Builders for scheduler tests: host nodes, vNode requests, specs."""

from __future__ import annotations

from typing import Any, Literal

from libs.api.models import Vk8sSpec
from services.scheduler.logic import (
    HostNode,
    Inventory,
    PlacementRequest,
    Resources,
    Taint,
    Toleration,
    VNodeRequest,
)

GI = 1 << 30


def host(
    name: str,
    *,
    gpus: int = 8,
    model: str | None = "A100",
    zone: str | None = "zone-a",
    cpu: int = 96,
    memory_gi: int = 1024,
    pods: int = 110,
    taints: tuple[Taint, ...] = (),
    cordoned: bool = False,
) -> HostNode:
    return HostNode(
        name=name,
        allocatable=Resources(gpus, cpu * 1000, memory_gi * GI, pods),
        gpu_model=model if gpus else None,
        zone=zone,
        taints=taints,
        cordoned=cordoned,
    )


def inventory(*nodes: HostNode) -> Inventory:
    inv = Inventory()
    for node in nodes:
        inv.upsert_node(node)
    return inv


def vnode(
    name: str,
    gpus: int = 0,
    *,
    cpu: int = 4,
    memory_gi: int = 16,
    model: str | None = None,
    tolerations: tuple[Toleration, ...] = (),
    role: Literal["master", "worker"] = "worker",
) -> VNodeRequest:
    resources = Resources(gpus, cpu * 1000, memory_gi * GI, 1)
    return VNodeRequest(name, role, resources, model, tolerations)


def gang(
    *vnodes: VNodeRequest, spread: bool = False, cluster_id: str = "team/a", uid: str = "uid-a", **kwargs: Any
) -> PlacementRequest:
    return PlacementRequest(cluster_id=cluster_id, uid=uid, vnodes=vnodes, spread_zones=spread, **kwargs)


def spec(*nodes: dict[str, Any], placement: dict[str, Any] | None = None) -> Vk8sSpec:
    document: dict[str, Any] = {"nodes": list(nodes)}
    if placement is not None:
        document["placement"] = placement
    return Vk8sSpec.model_validate(document)


def node_spec(
    name: str, gpus: int = 0, *, role: str = "worker", cpu: str = "4", memory: str = "16Gi", **extra: Any
) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    if gpus:
        resources["requests"]["nvidia.com/gpu"] = str(gpus)
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
    return {"name": name, "role": role, "image": "ghcr.io/vk8s/kink:v1.29", "resources": resources, **extra}

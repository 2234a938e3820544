"""What the supervisor does through the Kubernetes API while it brings the testbed up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from kubernetes.aio import client, config

from vk8s.testbed import rest
from vk8s.testbed.config import GPU_RESOURCE
from vk8s.testbed.crds import apply_crds, project_crds
from vk8s.testbed.sandbox import SandboxController

__all__ = [
    "SandboxController",
    "apply_crds",
    "connect",
    "create_nodes",
    "nodes_ready",
    "project_crds",
    "service_account_exists",
]


async def connect(kubeconfig: Path) -> client.ApiClient:
    return cast(client.ApiClient, await config.new_client_from_config(config_file=str(kubeconfig), persist_config=False))


async def create_nodes(api: client.ApiClient, manifests: list[dict[str, Any]]) -> None:
    await asyncio.gather(*(rest.create_or_keep(api, "/api/v1/nodes", manifest) for manifest in manifests))


async def nodes_ready(api: client.ApiClient, names: list[str], gpus: int = 0) -> bool:
    """Every named node Ready and advertising its GPUs (a real node's device plugin registers late)."""
    nodes = await rest.request(api, "GET", "/api/v1/nodes")
    ready = {
        node["metadata"]["name"]
        for node in nodes["items"]
        if any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions") or [])
        and (not gpus or node["status"].get("allocatable", {}).get(GPU_RESOURCE) == str(gpus))
    }
    return ready.issuperset(names)


async def service_account_exists(api: client.ApiClient, namespace: str, name: str) -> bool:
    return await rest.get_or_none(api, f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}") is not None

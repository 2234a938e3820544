"""Installing CustomResourceDefinitions from YAML files and waiting until the apiserver serves them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from vk8s.testbed import rest
from vk8s.testbed.config import CRDS_DIR

_CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def project_crds(directory: Path = CRDS_DIR) -> list[dict[str, Any]]:
    """Every CRD document in deploy/crds/ (none yet is fine)."""
    documents: list[dict[str, Any]] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "CustomResourceDefinition":
                documents.append(document)
    return documents


async def apply_crds(api: client.ApiClient, documents: list[dict[str, Any]], timeout: float = 30.0) -> None:
    """Creates or replaces each CRD, then waits until all are Established."""
    for document in documents:
        name = document["metadata"]["name"]
        try:
            await rest.request(api, "POST", _CRDS_PATH, body=document)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = await rest.request(api, "GET", f"{_CRDS_PATH}/{name}")
            replacement = {**document, "metadata": {**document["metadata"]}}
            replacement["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await rest.request(api, "PUT", f"{_CRDS_PATH}/{name}", body=replacement)
    deadline = time.monotonic() + timeout
    for document in documents:
        name = document["metadata"]["name"]
        while not _established(await rest.request(api, "GET", f"{_CRDS_PATH}/{name}")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} is not Established after {timeout:.0f}s")
            await asyncio.sleep(0.05)


def _established(crd: dict[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

"""Local persistent volumes for the real tier: a default StorageClass and its provisioner.

A claim of the class is served once a node is chosen for it (`volume.kubernetes.io/selected-node`,
which kube-scheduler sets, and the vnode stage sets itself for vNodes pinned to a host): a
directory under the testbed's state becomes a `local` PersistentVolume bound to that claim and
that node. A released volume's directory and object go (reclaim policy Delete).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from vk8s.testbed import rest

log = logging.getLogger(__name__)

STORAGE_CLASS = "vk8s-testbed-local"
PROVISIONER = "vk8s.skt.co.kr/testbed-local"
SELECTED_NODE = "volume.kubernetes.io/selected-node"


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }


def volume_for(claim: dict[str, Any], directory: Path) -> dict[str, Any] | None:
    """The PersistentVolume for a claim of our class with a node chosen, else None."""
    metadata, spec = claim["metadata"], claim["spec"]
    node = (metadata.get("annotations") or {}).get(SELECTED_NODE)
    if spec.get("storageClassName") != STORAGE_CLASS or not node or spec.get("volumeName"):
        return None
    if metadata.get("deletionTimestamp"):
        return None
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{metadata['uid']}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "local": {"path": str(directory / f"pvc-{metadata['uid']}")},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": metadata["namespace"],
                "name": metadata["name"],
                "uid": metadata["uid"],
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
                    ]
                }
            },
        },
    }


class Provisioner:
    def __init__(self, api: client.ApiClient, directory: Path) -> None:
        self.api = api
        self.directory = directory

    async def run(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await rest.create_or_keep(self.api, "/apis/storage.k8s.io/v1/storageclasses", storage_class())
        await asyncio.gather(
            rest.list_and_watch(self.api, "/api/v1/persistentvolumeclaims", self._on_claim),
            rest.list_and_watch(self.api, "/api/v1/persistentvolumes", self._on_volume),
        )

    async def _on_claim(self, kind: str, claim: dict[str, Any]) -> None:
        if kind == "DELETED" or (volume := volume_for(claim, self.directory)) is None:
            return
        Path(volume["spec"]["local"]["path"]).mkdir(exist_ok=True)
        await rest.create_or_keep(self.api, "/api/v1/persistentvolumes", volume)

    async def _on_volume(self, kind: str, volume: dict[str, Any]) -> None:
        annotations = volume["metadata"].get("annotations") or {}
        if annotations.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
            return
        path = Path(volume["spec"]["local"]["path"])
        if kind == "DELETED":
            await asyncio.to_thread(shutil.rmtree, path, True)
            return
        if (volume.get("status") or {}).get("phase") in ("Released", "Failed"):
            await asyncio.to_thread(shutil.rmtree, path, True)
            try:
                await rest.request(self.api, "DELETE", f"/api/v1/persistentvolumes/{volume['metadata']['name']}")
            except ApiException as exc:
                if exc.status != 404:
                    raise

"""Per-pod exec sandboxes: `exec` into a simulated pod runs a local command in that pod's own directory.

For every pod bound to a simulated node the controller makes `<root>/<namespace>/<pod>/` (with a
`bin/` that comes first on PATH), creates a kwok `Exec` object pointing there, and then marks the
pod with the sandbox annotation, which is what lets kwok report the pod Running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from vk8s.testbed import rest
from vk8s.testbed.config import FAKE_NODE_ANNOTATION, SANDBOX_ANNOTATION

log = logging.getLogger(__name__)

EXEC_API_VERSION = "kwok.x-k8s.io/v1alpha1"


def sandbox_dir(root: Path, namespace: str, pod: str) -> Path:
    return root / namespace / pod


def exec_manifest(pod: dict[str, Any], directory: Path, base_path: str) -> dict[str, Any]:
    metadata = pod["metadata"]
    envs = {
        "VK8S_SANDBOX": str(directory),
        "VK8S_POD_NAME": metadata["name"],
        "VK8S_POD_NAMESPACE": metadata["namespace"],
        "VK8S_POD_UID": metadata["uid"],
        "VK8S_NODE_NAME": pod["spec"]["nodeName"],
        "HOME": str(directory),
        # Tools a later stage installs into the sandbox shadow the host's; `sh -c` resolves them.
        "PATH": f"{directory / 'bin'}:{base_path}",
    }
    return {
        "apiVersion": EXEC_API_VERSION,
        "kind": "Exec",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"], "uid": metadata["uid"]}
            ],
        },
        "spec": {
            "execs": [
                {"local": {"workDir": str(directory), "envs": [{"name": k, "value": v} for k, v in envs.items()]}}
            ]
        },
    }


def _exec_path(namespace: str, name: str = "") -> str:
    path = f"/apis/{EXEC_API_VERSION}/namespaces/{namespace}/execs"
    return f"{path}/{name}" if name else path


class SandboxController:
    def __init__(self, api: client.ApiClient, root: Path) -> None:
        self.api = api
        self.root = root
        self.base_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        self._fake_nodes: dict[str, bool] = {}

    async def run(self) -> None:
        """List, then watch, pods forever; a broken or expired watch lists again."""
        while True:
            try:
                listing = await rest.request(self.api, "GET", "/api/v1/pods")
                for pod in listing["items"]:
                    await self._reconcile(pod)
                resource_version = listing["metadata"]["resourceVersion"]
                while True:
                    async for event in rest.watch(self.api, "/api/v1/pods", resource_version):
                        resource_version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] == "DELETED":
                            await self._remove(event["object"])
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            await self._reconcile(event["object"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Pod watch failed; listing again")
                await asyncio.sleep(1)

    async def _is_fake_node(self, name: str) -> bool:
        if name not in self._fake_nodes:
            node = await rest.get_or_none(self.api, f"/api/v1/nodes/{name}")
            if node is None:
                return False
            key, value = FAKE_NODE_ANNOTATION
            self._fake_nodes[name] = (node["metadata"].get("annotations") or {}).get(key) == value
        return self._fake_nodes[name]

    async def _reconcile(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        node = pod["spec"].get("nodeName")
        if not node or metadata.get("deletionTimestamp") or not await self._is_fake_node(node):
            return
        if SANDBOX_ANNOTATION in (metadata.get("annotations") or {}):
            return
        directory = sandbox_dir(self.root, metadata["namespace"], metadata["name"])
        (directory / "bin").mkdir(parents=True, exist_ok=True)
        await self._put_exec(exec_manifest(pod, directory, self.base_path))
        try:
            await rest.request(
                self.api,
                "PATCH",
                f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}",
                body={"metadata": {"uid": metadata["uid"], "annotations": {SANDBOX_ANNOTATION: str(directory)}}},
                content_type=rest.MERGE_PATCH,
            )
        except ApiException as exc:
            # Gone, or replaced by a pod of the same name (uid precondition): its own event follows.
            if exc.status not in (404, 409):
                raise

    async def _put_exec(self, manifest: dict[str, Any]) -> None:
        name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        try:
            await rest.request(self.api, "POST", _exec_path(namespace), body=manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Left by an earlier pod of the same name: point it at the new one.
            current = await rest.request(self.api, "GET", _exec_path(namespace, name))
            manifest["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await rest.request(self.api, "PUT", _exec_path(namespace, name), body=manifest)

    async def _remove(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        directory = sandbox_dir(self.root, metadata["namespace"], metadata["name"])
        if (metadata.get("annotations") or {}).get(SANDBOX_ANNOTATION) != str(directory):
            return
        try:
            await rest.request(self.api, "DELETE", _exec_path(metadata["namespace"], metadata["name"]))
        except ApiException as exc:
            if exc.status != 404:
                raise
        shutil.rmtree(directory, ignore_errors=True)

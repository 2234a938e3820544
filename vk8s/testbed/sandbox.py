"""Per-pod exec sandboxes: `exec` into a simulated pod runs a local command in that pod's own directory.

For every pod bound to a simulated node the controller makes its sandbox directory (with a `bin/`
that comes first on PATH), creates a kwok `Exec` object pointing there, and then marks the pod
with the sandbox annotation, which is what lets kwok report the pod Running.

A pod with a PersistentVolumeClaim is a vNode: its sandbox is `<root>/<namespace>/pvc-<claim uid>/`,
so it outlives the pod (pause/resume keeps the claim) but not the claim (a new cluster of the same
name gets a new claim, so a fresh sandbox). Other pods get `<root>/<namespace>/<pod>/`, removed with
the pod. When a pod goes, the processes its sandbox started (pid files in `run/`) are stopped.
With `node_sim`, exec runs the real `vk8s-node` with the simulated OS tools first on PATH.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from services.bootstrap.adapters.node_exec import ExecInterrupted, ExecUnavailable, NodeExec
from vk8s.testbed import rest
from vk8s.testbed.config import FAKE_NODE_ANNOTATION, SANDBOX_ANNOTATION
from vk8s.testbed.node_sim.sandbox import CLAIM_PREFIX, NodeSim, stop_every_sandbox, stop_processes

EXEC_API_VERSION = "kwok.x-k8s.io/v1alpha1"


def sandbox_dir(root: Path, namespace: str, key: str) -> Path:
    """`key` is the pod's name, or `pvc-<uid>` of its first claim."""
    return root / namespace / key


def exec_manifest(
    pod: dict[str, Any], directory: Path, base_path: str, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    metadata = pod["metadata"]
    envs = {
        **(extra_env or {}),
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
    def __init__(self, api: client.ApiClient, root: Path, node_sim: NodeSim | None = None) -> None:
        self.api = api
        self.root = root
        self.node_sim = node_sim
        self.base_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        if node_sim is not None:
            self.base_path = f"{node_sim.path_prefix()}:{self.base_path}"
        self._fake_nodes: dict[str, dict[str, Any] | None] = {}

    async def run(self) -> None:
        """Watches pods (sandboxes) and claims (vNode sandboxes go with them); on the way out, stops
        every process a sandbox started."""
        try:
            await asyncio.gather(
                rest.list_and_watch(self.api, "/api/v1/pods", self._on_pod),
                rest.list_and_watch(self.api, "/api/v1/persistentvolumeclaims", self._on_claim),
            )
        finally:
            stop_every_sandbox(self.root)

    async def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "DELETED":
            await self._remove(pod)
        else:
            await self._reconcile(pod)

    async def _on_claim(self, kind: str, claim: dict[str, Any]) -> None:
        namespace = claim["metadata"]["namespace"]
        if kind == "ADDED":
            # Pods that waited for this claim to learn their sandbox.
            for pod in (await rest.request(self.api, "GET", f"/api/v1/namespaces/{namespace}/pods"))["items"]:
                await self._reconcile(pod)
        elif kind == "DELETED":
            key = f"{CLAIM_PREFIX}{claim['metadata']['uid']}"
            directory = sandbox_dir(self.root, namespace, key)
            if directory.exists():
                if self.node_sim is not None:
                    await asyncio.to_thread(self.node_sim.remove_volume, directory, f"{namespace}/{key}")
                else:
                    await asyncio.to_thread(stop_processes, directory)
                    shutil.rmtree(directory, ignore_errors=True)

    async def _fake_node(self, name: str) -> dict[str, Any] | None:
        if name not in self._fake_nodes:
            node = await rest.get_or_none(self.api, f"/api/v1/nodes/{name}")
            if node is None:
                return None
            key, value = FAKE_NODE_ANNOTATION
            self._fake_nodes[name] = node if (node["metadata"].get("annotations") or {}).get(key) == value else None
        return self._fake_nodes[name]

    async def _sandbox_key(self, pod: dict[str, Any]) -> str | None:
        """`pvc-<uid>` of the pod's first claim, the pod's name without one; None while the claim is missing."""
        claims = [
            volume["persistentVolumeClaim"]["claimName"]
            for volume in pod["spec"].get("volumes") or []
            if "persistentVolumeClaim" in volume
        ]
        if not claims:
            name: str = pod["metadata"]["name"]
            return name
        namespace = pod["metadata"]["namespace"]
        claim = await rest.get_or_none(self.api, f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claims[0]}")
        if claim is None or claim["metadata"].get("deletionTimestamp"):
            return None
        return f"{CLAIM_PREFIX}{claim['metadata']['uid']}"

    async def _reconcile(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        node_name = pod["spec"].get("nodeName")
        if not node_name or metadata.get("deletionTimestamp"):
            return
        if SANDBOX_ANNOTATION in (metadata.get("annotations") or {}):
            return
        node = await self._fake_node(node_name)
        if node is None:
            return
        key = await self._sandbox_key(pod)
        if key is None:
            return
        directory = sandbox_dir(self.root, metadata["namespace"], key)
        (directory / "bin").mkdir(parents=True, exist_ok=True)
        extra_env = None
        if self.node_sim is not None:
            # The node as it is now (not as cached): its annotations can simulate host faults.
            current = await rest.get_or_none(self.api, f"/api/v1/nodes/{node_name}") or node
            extra_env = self.node_sim.environment(pod, current, directory, key)
        await self._put_exec(exec_manifest(pod, directory, self.base_path, extra_env))
        await self._until_exec_reaches(pod)
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

    async def _until_exec_reaches(self, pod: dict[str, Any], timeout_s: float = 15.0) -> None:
        """kwok finds a pod's Exec through its own watch of Exec objects, which can lag the pod's: an
        exec right after Running was answered "no exec found". Probes until an exec into the pod
        runs in this pod's sandbox; a failure raises, and the watch's relist tries again."""
        metadata = pod["metadata"]
        node_exec = NodeExec(self.api, pod["spec"]["containers"][0]["name"], timeout_s=timeout_s)
        probe = ["sh", "-c", 'printf %s "$VK8S_POD_UID"']
        answer: object = "no answer yet"
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            try:
                result = await node_exec.run(metadata["namespace"], metadata["name"], probe)
                if result.exit_code == 0 and result.stdout == metadata["uid"]:
                    return
                answer = result
            except aiohttp.WSServerHandshakeError as error:
                if error.status == 404:
                    return  # the pod is gone: its DELETED event follows
                answer = error
            except (RuntimeError, ExecUnavailable, ExecInterrupted, TimeoutError) as error:
                answer = error
            await asyncio.sleep(0.05)
        raise RuntimeError(f"exec into {metadata['namespace']}/{metadata['name']} not served in its sandbox: {answer}")

    async def _remove(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        annotated = (metadata.get("annotations") or {}).get(SANDBOX_ANNOTATION)
        if annotated is None or Path(annotated).parent != self.root / metadata["namespace"]:
            return
        directory = Path(annotated)
        try:
            await rest.request(self.api, "DELETE", _exec_path(metadata["namespace"], metadata["name"]))
        except ApiException as exc:
            if exc.status != 404:
                raise
        await asyncio.to_thread(stop_processes, directory)
        if not directory.name.startswith(CLAIM_PREFIX):
            shutil.rmtree(directory, ignore_errors=True)

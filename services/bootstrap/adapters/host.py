"""The host cluster: the Vk8s object, the vNode pods, and the Secrets that carry the inner admin kubeconfig."""

from __future__ import annotations

from typing import Any, Protocol

from kubernetes.aio import client

from libs.kube import not_found, read_vk8s
from libs.kube.objects import owner_reference
from libs.kube.vnodes import cluster_labels

KUBECONFIG_KEY = "kubeconfig"


class ClusterHost(Protocol):
    """What the handler reads and writes on the host cluster (HostCluster does it)."""

    async def vk8s(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def pod_and_controller(
        self, namespace: str, pod: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]: ...

    async def store_kubeconfig(
        self, vk8s: dict[str, Any], platform_namespace: str, name: str, kubeconfig: str
    ) -> None: ...


class HostCluster:
    def __init__(self, api: client.ApiClient):
        self._api = api
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)

    async def vk8s(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_vk8s(self._api, namespace, name)

    async def pod_and_controller(
        self, namespace: str, pod: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The pod and the StatefulSet its controller reference names, as the API server has them."""
        try:
            found = self._api.sanitize_for_serialization(await self._core.read_namespaced_pod(pod, namespace))
        except client.ApiException as error:
            if not_found(error):
                return None, None
            raise
        owner = next((ref for ref in found["metadata"].get("ownerReferences") or [] if ref.get("controller")), None)
        if owner is None or owner.get("kind") != "StatefulSet":
            return found, None
        try:
            statefulset = await self._apps.read_namespaced_stateful_set(owner["name"], namespace)
        except client.ApiException as error:
            if not_found(error):
                return found, None
            raise
        return found, self._api.sanitize_for_serialization(statefulset)

    async def store_kubeconfig(self, vk8s: dict[str, Any], platform_namespace: str, name: str, kubeconfig: str) -> None:
        """Secret `name` in the cluster's platform namespace (the one the services read; it goes with
        the namespace), then a copy in the tenant's namespace for the tenant (owned by the Vk8s, so it
        goes with the cluster; no service reads it). Create or replace, both."""
        metadata = vk8s["metadata"]
        labels = cluster_labels(metadata["namespace"], metadata["name"], metadata["uid"])
        await self._put_secret(platform_namespace, client.V1ObjectMeta(name=name, labels=labels), kubeconfig)
        copy = client.V1ObjectMeta(name=name, labels=labels, owner_references=[owner_reference(vk8s)])
        await self._put_secret(metadata["namespace"], copy, kubeconfig)

    async def _put_secret(self, namespace: str, metadata: client.V1ObjectMeta, kubeconfig: str) -> None:
        body = client.V1Secret(metadata=metadata, string_data={KUBECONFIG_KEY: kubeconfig}, type="Opaque")
        try:
            await self._core.create_namespaced_secret(namespace, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            await self._core.replace_namespaced_secret(str(metadata.name), namespace, body)

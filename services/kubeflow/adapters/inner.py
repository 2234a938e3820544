"""The virtual cluster's API server: server-side apply of any object, CRD establishment,
Deployments, and the dex ConfigMap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.dynamic import DynamicClient
from kubernetes.aio.dynamic.exceptions import ResourceNotFoundError

from libs.kube import metadata_of, name_of, namespace_of
from libs.kube.inner import inner_client

FIELD_MANAGER = "vk8s-kubeflow"


class ApplyError(Exception):
    """The API server refused an object: its status and reason, e.g. `404 Not Found`."""


class InnerCluster:
    """Use as `async with InnerCluster(kubeconfig_text, server) as inner:`; KubeconfigRefused
    (libs.kube.inner) for a kubeconfig that is not certificate data for `server`."""

    def __init__(self, kubeconfig: str, server: str, proxy_url: str | None = None):
        self._kubeconfig = kubeconfig
        self._server = server
        self._proxy_url = proxy_url
        self._api: client.ApiClient | None = None
        self._dynamic: DynamicClient | None = None

    async def __aenter__(self) -> InnerCluster:
        self._api = await inner_client(self._kubeconfig, server=self._server, proxy_url=self._proxy_url)
        self._dynamic = await DynamicClient(self._api)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._api is not None:
            await self._api.close()

    @property
    def api(self) -> client.ApiClient:
        assert self._api is not None
        return self._api

    async def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply; a kind the server does not know yet (its CRD is not established)
        is looked up again once after a discovery refresh."""
        assert self._dynamic is not None
        try:
            resource = await self._dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:
            await self._dynamic.resources.invalidate_cache()
            resource = await self._dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        try:
            await self._dynamic.server_side_apply(resource, body=dict(obj), field_manager=FIELD_MANAGER, force_conflicts=True)
        except client.ApiException as error:
            raise ApplyError(f"{error.status} {error.reason}") from error

    async def established(self, crd_names: list[str]) -> list[str]:
        """The CRDs of `crd_names` that are not established yet."""
        api = client.ApiextensionsV1Api(self.api)
        pending = []
        for name in crd_names:
            try:
                crd = await api.read_custom_resource_definition(name)
            except client.ApiException as error:
                if error.status == 404:
                    pending.append(name)
                    continue
                raise
            conditions = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
            if conditions.get("Established") != "True":
                pending.append(name)
        return pending

    async def deployments(self) -> dict[tuple[str, str], dict[str, Any]]:
        listing = await client.AppsV1Api(self.api).list_deployment_for_all_namespaces()
        return {(namespace_of(d), name_of(d)): self.api.sanitize_for_serialization(d) for d in listing.items}

    async def waiting_reasons(self) -> dict[tuple[str, str], str]:
        """Why pods of each Deployment are not ready, as their containers report it (e.g.
        `ErrImageNeverPull: Container image "..." is not present`), keyed by (namespace, Deployment)."""
        listing = await client.CoreV1Api(self.api).list_pod_for_all_namespaces()
        reasons: dict[tuple[str, str], str] = {}
        for pod in listing.items:
            owner = next((o.name for o in metadata_of(pod).owner_references or [] if o.kind == "ReplicaSet"), None)
            if owner is None or pod.status is None:
                continue
            for status in pod.status.container_statuses or []:
                waiting = status.state.waiting if status.state else None
                if waiting is not None and waiting.reason:
                    key = (namespace_of(pod), owner.rsplit("-", 1)[0])
                    reasons.setdefault(key, f"{waiting.reason}: {waiting.message or ''}".strip(": "))
        return reasons

    async def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            config_map = await client.CoreV1Api(self.api).read_namespaced_config_map(name, namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(config_map.data or {})

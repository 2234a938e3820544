"""The host cluster: the Vk8s object, the user's password Secret (tenant namespace), the inner kubeconfig
Secret (the cluster's platform namespace)."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes.aio import client

from libs.api import Vk8s
from libs.events import PermanentError, Reason
from libs.kube import metadata_of, not_found, read_vk8s
from libs.kube.vnodes import CLUSTER_UID_LABEL


class HostCluster:
    def __init__(self, api: client.ApiClient):
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    async def vk8s(self, namespace: str, name: str) -> Vk8s | None:
        obj = await read_vk8s(self._custom.api_client, namespace, name)
        return None if obj is None else Vk8s.model_validate(obj)

    async def secret_value(self, namespace: str, name: str, key: str, *, cluster_uid: str | None = None) -> str:
        """`cluster_uid`: the Secret must be labelled for the cluster of that uid (one the platform
        made in the cluster's platform namespace, where no tenant may write)."""
        try:
            secret = await self._core.read_namespaced_secret(name, namespace)
        except client.ApiException as error:
            if not_found(error):
                raise PermanentError(f"Secret {namespace}/{name} not found", reason=Reason.SECRET_MISSING) from None
            raise
        if cluster_uid is not None and (metadata_of(secret).labels or {}).get(CLUSTER_UID_LABEL) != cluster_uid:
            raise PermanentError(
                f"Secret {namespace}/{name} is not labelled for the cluster (uid {cluster_uid}); "
                "the platform's kubeconfig Secret is",
                reason=Reason.KUBECONFIG_REFUSED,
            )
        data: dict[str, Any] = secret.data or {}
        if key not in data:
            raise PermanentError(f"Secret {namespace}/{name} has no key {key!r}", reason=Reason.SECRET_MISSING)
        return base64.b64decode(data[key]).decode()

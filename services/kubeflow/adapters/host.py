"""The host cluster: the Vk8s object, the user's password Secret, the inner kubeconfig Secret."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes.aio import client

from libs.api import Vk8s
from libs.events import PermanentError
from libs.kube import GROUP, PLURAL, VERSION, not_found


class HostCluster:
    def __init__(self, api: client.ApiClient):
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    async def vk8s(self, namespace: str, name: str) -> Vk8s | None:
        try:
            obj = await self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except client.ApiException as error:
            if not_found(error):
                return None
            raise
        return Vk8s.model_validate(obj)

    async def secret_value(self, namespace: str, name: str, key: str) -> str:
        try:
            secret = await self._core.read_namespaced_secret(name, namespace)
        except client.ApiException as error:
            if not_found(error):
                raise PermanentError(f"Secret {namespace}/{name} not found", reason="SecretMissing") from None
            raise
        data: dict[str, Any] = secret.data or {}
        if key not in data:
            raise PermanentError(f"Secret {namespace}/{name} has no key {key!r}", reason="SecretMissing")
        return base64.b64decode(data[key]).decode()

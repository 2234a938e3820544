"""The authoritative answer to whether an ask is still wanted: its Vk8s object, read at once."""

from __future__ import annotations

from typing import Protocol

import aiohttp
from kubernetes.aio.client import ApiClient
from kubernetes.aio.client.exceptions import ApiException

from libs.events import TransientError
from libs.kube import read_vk8s


class WantedClusters(Protocol):
    """Whether an ask is still wanted (LiveClusters answers from the Vk8s object)."""

    async def wanted(self, cluster_id: str, uid: str) -> bool: ...


class LiveClusters:
    def __init__(self, api: ApiClient):
        self._api = api

    async def wanted(self, cluster_id: str, uid: str) -> bool:
        """Whether the Vk8s of `cluster_id` exists with this uid and is not being deleted."""
        namespace, name = cluster_id.split("/", 1)
        try:
            found = await read_vk8s(self._api, namespace, name)
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
            raise TransientError(f"reading Vk8s {cluster_id}: {error}") from error
        if found is None:
            return False
        metadata = found["metadata"]
        return bool(metadata.get("uid") == uid and not metadata.get("deletionTimestamp"))

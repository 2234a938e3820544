"""Writes a rendered status onto the `Vk8s` object through its status subresource."""

from __future__ import annotations

import enum
from typing import Any, Protocol

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from libs.events import TransientError
from libs.kube import GROUP, PLURAL, VERSION, ApiClient


class Written(enum.StrEnum):
    PATCHED = "patched"
    MISSING = "missing"  # no such object (e.g. a request rejected before one existed)
    REFUSED = "refused"  # the apiserver will never take this status: retrying cannot help


class StatusWrites(Protocol):
    """Writing a Vk8s object's status as the projector does it (StatusWriter does it)."""

    async def write(self, namespace: str, name: str, status: dict[str, Any]) -> tuple[Written, str]: ...


class StatusWriter:
    def __init__(self, api: ApiClient, *, field_manager: str = "vk8s-projector"):
        self._custom = client.CustomObjectsApi(api)
        self._field_manager = field_manager

    async def write(self, namespace: str, name: str, status: dict[str, Any]) -> tuple[Written, str]:
        """A JSON merge patch of the whole status: no resourceVersion, so it never conflicts, and
        writing the same status twice is a no-op. Ordering is the caller's (the KV revision)."""
        try:
            await self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}, field_manager=self._field_manager
            )
        except ApiException as error:
            if error.status == 404:
                return Written.MISSING, ""
            if error.status in (408, 409, 429) or (error.status or 500) >= 500:
                raise TransientError(f"patching status of {namespace}/{name}: HTTP {error.status}") from error
            return Written.REFUSED, f"HTTP {error.status}: {error.body or error.reason}"[:2000]
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise TransientError(f"patching status of {namespace}/{name}: {error!r}") from error
        return Written.PATCHED, ""

"""The Vk8s resource coordinates, and idempotent create for any object."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

from kubernetes.aio.client import ApiClient, CustomObjectsApi, V1ObjectMeta
from kubernetes.aio.client.exceptions import ApiException

GROUP = "vk8s.skt.co.kr"
VERSION = "v1alpha1"
PLURAL = "vk8s"
KIND = "Vk8s"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = f"{GROUP}/cleanup"

T = TypeVar("T")


class StoredObject(Protocol):
    """A kubernetes client model of an object as the apiserver returns it."""

    @property
    def metadata(self) -> V1ObjectMeta | None: ...


def metadata_of(stored: StoredObject) -> V1ObjectMeta:
    """The metadata of an object the apiserver returned: always there, though the client types it
    Optional; an object without is not what the caller asked for, and says so."""
    if stored.metadata is None:
        raise ValueError(f"a {type(stored).__name__} from the apiserver without metadata")
    return stored.metadata


def name_of(stored: StoredObject) -> str:
    """The name of an object the apiserver returned (see `metadata_of`)."""
    name = metadata_of(stored).name
    if name is None:
        raise ValueError(f"a {type(stored).__name__} from the apiserver without metadata.name")
    return name


def namespace_of(stored: StoredObject) -> str:
    """The namespace of a namespaced object the apiserver returned (see `metadata_of`)."""
    namespace = metadata_of(stored).namespace
    if namespace is None:
        raise ValueError(f"a {type(stored).__name__} from the apiserver without metadata.namespace")
    return namespace


def not_found(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == 404


def conflict(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == 409


async def create_or_get(create: Callable[[], Awaitable[T]], get: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
    """Creates an object with a deterministic name; if it exists already (409), returns it.
    The flag says whether this call created it."""
    try:
        return await create(), True
    except ApiException as error:
        if error.status != 409:
            raise
    return await get(), False


async def read_vk8s(api: ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The Vk8s object, or None when there is none."""
    try:
        found = await CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return cast(dict[str, Any], found)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def owner_reference(vk8s: dict[str, Any]) -> dict[str, Any]:
    """Makes an object a dependent of a Vk8s, so deleting the Vk8s garbage-collects it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": vk8s["metadata"]["name"],
        "uid": vk8s["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }

"""Kubernetes adapter helpers shared by the services (official client, asyncio API)."""

from libs.kube.client import ApiClient, kube_client
from libs.kube.objects import (
    FINALIZER,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    conflict,
    create_or_get,
    metadata_of,
    name_of,
    namespace_of,
    not_found,
    read_vk8s,
)
from libs.kube.watch import WatchEvent, watch_objects

__all__ = [
    "FINALIZER",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ApiClient",
    "WatchEvent",
    "conflict",
    "create_or_get",
    "kube_client",
    "metadata_of",
    "name_of",
    "namespace_of",
    "not_found",
    "read_vk8s",
    "watch_objects",
]

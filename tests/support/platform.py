"""A cluster's platform namespace made as the gateway makes it before accepting the cluster, for
tests that run a later stage without the gateway."""

from __future__ import annotations

from typing import Any, cast

from kubernetes.aio import client

from libs.kube.vnodes import platform_namespace_body
from vk8s.testbed.fixtures import default_service_account


async def make_platform_namespace(api: client.ApiClient, vk8s: dict[str, Any], timeout: float = 30.0) -> str:
    """The Vk8s object's platform namespace, returned once its default ServiceAccount exists (pods
    need it); the caller deletes it."""
    metadata = vk8s["metadata"]
    body = platform_namespace_body(metadata["namespace"], metadata["name"], metadata["uid"])
    await client.CoreV1Api(api).create_namespace(cast(client.V1Namespace, body))  # a dict body is sent as it is
    await default_service_account(api, body["metadata"]["name"], timeout)
    return str(body["metadata"]["name"])

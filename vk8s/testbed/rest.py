"""Plain JSON requests through a `kubernetes.aio` ApiClient (its TLS, auth and session), no models.

The generated API methods validate bodies and build responses with pydantic models whose
schemas are built on first use: about a second per resource type, several on a busy machine,
which the supervisor's start budget cannot afford. Tests and services use the typed API.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"


async def request(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    query: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    method, url, headers, body, post = await api.param_serialize(
        method=method,
        resource_path=path,
        query_params=list((query or {}).items()) or None,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = await api.call_api(method, url, header_params=headers, body=body, post_params=post)
    data = await response.read()
    if response.status >= 400:
        raise ApiException(http_resp=response)
    return json.loads(data)


async def get_or_none(api: client.ApiClient, path: str) -> dict[str, Any] | None:
    try:
        return await request(api, "GET", path)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def watch(
    api: client.ApiClient, path: str, resource_version: str, timeout_seconds: int = 240
) -> AsyncIterator[dict[str, Any]]:
    """Watch events (dicts with `type` and `object`) from `resource_version` until the server ends the watch."""
    query = {
        "watch": "true",
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(timeout_seconds),
    }
    method, url, headers, _, _ = await api.param_serialize(
        method="GET",
        resource_path=path,
        query_params=list(query.items()),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = await api.call_api(method, url, header_params=headers)
    try:
        if response.status >= 400:
            await response.read()
            raise ApiException(http_resp=response)
        async for line in response.response.content:
            event = json.loads(line)
            if event["type"] == "ERROR":
                status = event["object"]
                raise ApiException(status=status.get("code"), reason=status.get("message"))
            yield event
    finally:
        response.response.release()

"""Plain JSON requests through a `kubernetes.aio` ApiClient (its TLS, auth and session), no models.

The generated API methods validate bodies and build responses with pydantic models whose
schemas are built on first use: about a second per resource type, several on a busy machine,
which the supervisor's start budget cannot afford. Tests and services use the typed API.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"
log = logging.getLogger(__name__)


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
    method, url, headers, serialized, post = await api.param_serialize(
        method=method,
        resource_path=path,
        query_params=list((query or {}).items()) or None,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = await api.call_api(method, url, header_params=headers, body=serialized, post_params=post)
    data = await response.read()
    if response.status >= 400:
        raise ApiException(http_resp=response)
    return cast(dict[str, Any], json.loads(data))


async def get_or_none(api: client.ApiClient, path: str) -> dict[str, Any] | None:
    try:
        return await request(api, "GET", path)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def create_or_keep(api: client.ApiClient, path: str, body: dict[str, Any]) -> None:
    """POST, where an object of that name already there is success."""
    try:
        await request(api, "POST", path, body=body)
    except ApiException as exc:
        if exc.status != 409:
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


async def list_and_watch(
    api: client.ApiClient, path: str, handle: Callable[[str, dict[str, Any]], Awaitable[None]]
) -> None:
    """List, then watch, forever, calling `handle(event type, object)`; a broken or expired watch lists again."""
    while True:
        try:
            listing = await request(api, "GET", path)
            for item in listing["items"]:
                await handle("ADDED", item)
            resource_version = listing["metadata"]["resourceVersion"]
            while True:
                async for event in watch(api, path, resource_version):
                    resource_version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        await handle(event["type"], event["object"])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Watch of %s failed; listing again", path)
            await asyncio.sleep(1)

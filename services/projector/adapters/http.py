"""The read API on the operator HTTP server: GET /v1/clusters and /v1/clusters/{namespace}/{name}."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from libs.events import TransientError
from services.projector.adapters.read_model import ClusterStore, ClusterSummary, ClusterView


class ReadApi:
    """Routes are added before the server starts (aiohttp freezes its router then); the read
    model arrives once NATS is connected, and until then the API answers 503."""

    def __init__(self) -> None:
        self._store: ClusterStore | None = None
        self._view: ClusterView | None = None

    def install(self, app: web.Application) -> None:
        app.router.add_get("/v1/clusters", self._list)
        app.router.add_get("/v1/clusters/{namespace}/{name}", self._get)

    def serve(self, store: ClusterStore, view: ClusterView) -> None:
        self._store = store
        self._view = view

    async def _list(self, request: web.Request) -> web.Response:
        """Every cluster (from the watched view), optionally ?namespace=...&phase=..."""
        if self._view is None or not self._view.synced.is_set():
            raise web.HTTPServiceUnavailable(reason="read model not loaded yet")
        namespace, phase = request.query.get("namespace"), request.query.get("phase")
        items = [
            _json(cluster)
            for cluster in sorted(self._view, key=lambda c: c.cluster_id)
            if (namespace is None or cluster.namespace == namespace)
            and (phase is None or cluster.status.get("phase") == phase)
        ]
        return web.json_response({"items": items})

    async def _get(self, request: web.Request) -> web.Response:
        """One cluster, read from KV itself so it is as fresh as the last event applied."""
        if self._store is None:
            raise web.HTTPServiceUnavailable(reason="read model not loaded yet")
        cluster_id = f"{request.match_info['namespace']}/{request.match_info['name']}"
        try:
            record, _ = await self._store.get(cluster_id)
        except TransientError as error:
            raise web.HTTPServiceUnavailable(reason=str(error)) from error
        if record is None:
            raise web.HTTPNotFound(text=f"no cluster {cluster_id}")
        return web.json_response(_json(record.summary()))


def _json(cluster: ClusterSummary) -> dict[str, Any]:
    return cluster.model_dump(mode="json", by_alias=True)

"""The operators' read-only JSON API, on the service's operator HTTP server:

    GET /v1/allocations                      every cluster: networks and vNode addresses
    GET /v1/allocations/{namespace}/{name}   one cluster (404 if it holds nothing)
    GET /v1/pools                            per pool: total, allocated, reserved, free
    GET /v1/orphans                          the last reconcile's orphaned addresses
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel

from libs.events import cluster_id_of
from services.ipmanager.allocator import Allocator
from services.ipmanager.reconciler import Reconciler

log = structlog.get_logger(__name__)

Route = Callable[[web.Request], Awaitable[web.Response]]


def _json(document: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    body = document.model_dump(mode="json", by_alias=True) if isinstance(document, BaseModel) else document
    return web.json_response(body, status=status)


def _dump(models: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [model.model_dump(mode="json", by_alias=True) for model in models]


class ReadApi:
    """Routes are added before the operator server starts (its router freezes then); the allocator
    and reconciler exist only once NATS is connected, so until `attach` the API answers 503."""

    def __init__(self, app: web.Application):
        self._allocator: Allocator | None = None
        self._reconciler: Reconciler | None = None
        app.router.add_get("/v1/allocations", self._guard(self._allocations))
        app.router.add_get("/v1/allocations/{namespace}/{name}", self._guard(self._allocation))
        app.router.add_get("/v1/pools", self._guard(self._pools))
        app.router.add_get("/v1/orphans", self._guard(self._orphans))

    def attach(self, allocator: Allocator, reconciler: Reconciler) -> None:
        self._allocator = allocator
        self._reconciler = reconciler

    def _guard(self, route: Callable[[Allocator, Reconciler, web.Request], Awaitable[web.Response]]) -> Route:
        async def guarded(request: web.Request) -> web.Response:
            if self._allocator is None or self._reconciler is None:
                return _json({"error": "starting"}, status=503)
            try:
                return await route(self._allocator, self._reconciler, request)
            except Exception as error:  # noqa: BLE001 - an unreadable store is a 503, not a crash
                log.warning("Reading allocation state failed", path=request.path, error=str(error))
                return _json({"error": f"allocation state unavailable: {error}"}, status=503)

        return guarded

    @staticmethod
    async def _allocations(allocator: Allocator, _: Reconciler, __: web.Request) -> web.Response:
        return _json({"clusters": _dump(await allocator.allocations())})

    @staticmethod
    async def _allocation(allocator: Allocator, _: Reconciler, request: web.Request) -> web.Response:
        cluster_id = cluster_id_of(request.match_info["namespace"], request.match_info["name"])
        allocation = await allocator.allocation(cluster_id)
        if allocation is None:
            return _json({"error": f"no allocation for cluster {cluster_id}"}, status=404)
        return _json(allocation)

    @staticmethod
    async def _pools(allocator: Allocator, _: Reconciler, __: web.Request) -> web.Response:
        return _json({"pools": _dump(await allocator.pool_usage())})

    @staticmethod
    async def _orphans(_: Allocator, reconciler: Reconciler, __: web.Request) -> web.Response:
        report = reconciler.last_report
        if report is None:
            return _json({"checkedAt": None, "orphans": []})
        return _json(report)

"""Runs the projector: `python -m services.projector` (settings from VK8S_PROJECTOR_*)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from libs.events import REGISTRY, ensure_kv
from libs.kube import kube_client
from libs.runtime import Service
from services.projector.adapters.http import ReadApi
from services.projector.adapters.metrics import ProjectorMetrics
from services.projector.adapters.read_model import ClusterStore, ClusterView
from services.projector.adapters.status import StatusWriter
from services.projector.handlers import Projector
from services.projector.settings import ProjectorSettings


@asynccontextmanager
async def projector_service(settings: ProjectorSettings, *, configure_logs: bool = True) -> AsyncIterator[Service]:
    """The wired service, connected but not consuming yet: `await service.run()` starts it."""
    service = Service("projector", settings, configure_logs=configure_logs)
    read_api = ReadApi()
    read_api.install(service.http.app)
    service.http.require_token("/v1/", settings.read_api_token, "VK8S_PROJECTOR_READ_API_TOKEN")
    async with service, await kube_client(settings.kubeconfig) as api:
        kv = await ensure_kv(service.js, settings.kv_bucket, replicas=settings.kv_replicas)
        metrics = ProjectorMetrics(service.metrics_registry)
        store = ClusterStore(kv, attempts=settings.cas_attempts, on_conflict=metrics.kv_conflicts.inc)
        view = ClusterView(kv, on_change=metrics.set_phases)
        read_api.serve(store, view)
        projector = Projector(store, StatusWriter(api), metrics, confirm_attempts=settings.status_confirm_attempts)
        # It reads every subject to fold it into the status; the gateway alone answers bad requests.
        service.consume(
            settings.durable, dict.fromkeys(REGISTRY.subjects(), projector.handle), answers_invalid_requests=False
        )
        service.add_task("cluster-view", view.run)
        service.http.add_readiness_check("cluster-view", view.synced.is_set)
        yield service


async def main() -> None:
    async with projector_service(ProjectorSettings()) as service:
        await service.run()


if __name__ == "__main__":
    asyncio.run(main())

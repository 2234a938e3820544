"""`python -m services.projector`: wiring only (settings from VK8S_PROJECTOR_*)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from libs.events import ensure_kv
from libs.kube import kube_client
from libs.runtime import Service, serve
from services.projector.adapters.feed import EventFeed
from services.projector.adapters.http import ReadApi
from services.projector.adapters.metrics import ProjectorMetrics
from services.projector.adapters.read_model import ClusterStore, ClusterView
from services.projector.adapters.status import StatusWriter
from services.projector.handlers import TOPOLOGY, ProjectorHandlers
from services.projector.settings import ProjectorSettings


@contextlib.asynccontextmanager
async def wired(settings: ProjectorSettings, *, configure_logs: bool = True) -> AsyncIterator[Service]:
    """The service with its consumer and tasks registered, not started: `await service.run()`."""
    service = Service(TOPOLOGY.service, settings, configure_logs=configure_logs)
    read_api = ReadApi()
    read_api.install(service.http.app)
    service.http.require_token("/v1/", settings.read_api_token, "VK8S_PROJECTOR_READ_API_TOKEN")
    async with service, await kube_client(settings.kubeconfig) as api:
        kv = await ensure_kv(service.js, settings.kv_bucket, replicas=settings.kv_replicas)
        metrics = ProjectorMetrics(service.metrics_registry)
        store = ClusterStore(kv, attempts=settings.cas_attempts, on_conflict=metrics.kv_conflicts.inc)
        view = ClusterView(kv, on_change=metrics.set_phases)
        read_api.serve(store, view)
        assert service.nc is not None
        handlers = ProjectorHandlers(
            store=store,
            writer=StatusWriter(api),
            feed=EventFeed(service.nc),
            metrics=metrics,
            confirm_attempts=settings.status_confirm_attempts,
        )
        service.consume(TOPOLOGY, handlers, durable=settings.durable)
        service.add_task("cluster-view", view.run)
        retention = timedelta(seconds=settings.deleted_retention_s)
        service.add_task("deleted-sweep", lambda: handlers.remove_deleted_clusters(retention, settings.deleted_sweep_s))
        service.http.add_readiness_check("cluster-view", view.synced.is_set)
        yield service


def main() -> None:
    serve(wired(ProjectorSettings()))


if __name__ == "__main__":
    main()

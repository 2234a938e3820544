"""`python -m services.vnode`: wiring only (settings from VK8S_VNODE_*)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from libs.events import ensure_kv, utc_now
from libs.kube import kube_client
from libs.runtime import Service, serve
from services.vnode.adapters.kube import VNodeObjects
from services.vnode.adapters.metrics import VNodeMetrics
from services.vnode.adapters.store import RecordStore
from services.vnode.handlers import ROLLOUT_TRACKER, TOPOLOGY, VNodeHandlers
from services.vnode.rollouts import RolloutTracker
from services.vnode.settings import VNodeSettings


@contextlib.asynccontextmanager
async def wired(settings: VNodeSettings, *, configure_logs: bool = True) -> AsyncIterator[Service]:
    """The service with its consumer and tasks registered, not started: `await service.run()`."""
    async with (
        await kube_client(settings.kubeconfig) as api,
        Service(TOPOLOGY.service, settings, configure_logs=configure_logs) as service,
    ):
        metrics = VNodeMetrics(service.metrics_registry)
        store = RecordStore(await ensure_kv(service.js, settings.kv_bucket, replicas=settings.kv_replicas))
        kube = VNodeObjects(api, metrics, ip_annotation=settings.ip_annotation)
        tracker = RolloutTracker(
            kube=kube,
            store=store,
            publisher=service.publisher.only(ROLLOUT_TRACKER),
            metrics=metrics,
            settings=settings,
            clock=utc_now,
        )
        handlers = VNodeHandlers(settings=settings, store=store, kube=kube, tracker=tracker, clock=utc_now)
        service.consume(TOPOLOGY, handlers)
        service.add_task("vnode-statefulset-watch", tracker.watch)
        service.add_task("vnode-rollout-tracker", tracker.run)
        yield service


def main() -> None:
    serve(wired(VNodeSettings()))


if __name__ == "__main__":
    main()

"""Wiring of the vnode service: `python -m services.vnode` (settings from VK8S_VNODE_*)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from libs.events import ensure_kv, utc_now
from libs.kube import kube_client
from libs.runtime import Service
from services.vnode import SERVICE
from services.vnode.adapters.kube import VNodeObjects
from services.vnode.adapters.metrics import VNodeMetrics
from services.vnode.adapters.store import RecordStore
from services.vnode.adapters.tracker import RolloutTracker
from services.vnode.handlers import VNodeHandlers
from services.vnode.settings import VNodeSettings


@contextlib.asynccontextmanager
async def wired(settings: VNodeSettings, *, configure_logs: bool = True) -> AsyncIterator[Service]:
    """The service with its consumer and tasks registered, not yet started."""
    api = await kube_client(settings.kubeconfig)
    async with api, Service(SERVICE, settings, configure_logs=configure_logs) as service:
        metrics = VNodeMetrics(service.metrics_registry)
        store = RecordStore(await ensure_kv(service.js, settings.kv_bucket))
        kube = VNodeObjects(api, metrics, ip_annotation=settings.ip_annotation)
        tracker = RolloutTracker(
            kube=kube, store=store, publisher=service.publisher, metrics=metrics, settings=settings, clock=utc_now
        )
        handlers = VNodeHandlers(settings=settings, store=store, kube=kube, tracker=tracker, clock=utc_now)
        service.consume(SERVICE, handlers.subscriptions())
        service.add_task("vnode-statefulset-watch", tracker.watch)
        service.add_task("vnode-rollout-tracker", tracker.run)
        yield service


async def run(settings: VNodeSettings) -> None:
    async with wired(settings) as service:
        await service.run()


def main() -> None:
    asyncio.run(run(VNodeSettings()))


if __name__ == "__main__":
    main()

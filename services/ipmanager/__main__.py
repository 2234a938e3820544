"""`python -m services.ipmanager`: wiring only (settings from VK8S_IPMANAGER_*)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from libs.events import ensure_kv
from libs.kube import kube_client
from libs.runtime import Service, serve
from services.ipmanager.adapters.http import ReadApi
from services.ipmanager.adapters.kv import KvStore
from services.ipmanager.adapters.metrics import IpManagerMetrics
from services.ipmanager.adapters.pods import VNodePods
from services.ipmanager.allocator import Allocator
from services.ipmanager.handlers import TOPOLOGY, IpManagerHandlers
from services.ipmanager.reconciler import Reconciler
from services.ipmanager.settings import IpManagerSettings


@contextlib.asynccontextmanager
async def wired(settings: IpManagerSettings, *, configure_logs: bool = True) -> AsyncIterator[Service]:
    """The service with its consumer and tasks registered, not started: `await service.run()`."""
    service = Service(TOPOLOGY.service, settings, configure_logs=configure_logs)
    read_api = ReadApi(service.http.app)
    service.http.require_token("/v1/", settings.read_api_token, "VK8S_IPMANAGER_READ_API_TOKEN")
    # The service stops (and with it the reconcile) before the stack closes the Kubernetes client.
    async with contextlib.AsyncExitStack() as stack, service:
        kv = await ensure_kv(service.js, settings.kv_bucket, replicas=settings.kv_replicas)
        store = KvStore(kv)
        metrics = IpManagerMetrics(service.metrics_registry)
        layout, pool = settings.network_layout(), settings.address_pool()
        allocator = Allocator(
            store,
            layout=layout,
            pool=pool,
            metrics=metrics,
            tombstone_retention=timedelta(seconds=settings.tombstone_retention_s),
        )
        pods = None
        if settings.reconcile_pods:
            api = await stack.enter_async_context(await kube_client(settings.kubeconfig))
            pods = VNodePods(api, settings.vnode_pod_selector)
        reconciler = Reconciler(
            store,
            pods,
            layout=layout,
            pool=pool,
            metrics=metrics,
            grace_s=settings.orphan_grace_s,
            interval_s=settings.reconcile_interval_s,
        )
        read_api.attach(allocator, reconciler)
        service.consume(TOPOLOGY, IpManagerHandlers(allocator=allocator))
        service.add_task("reconcile", reconciler.run)
        yield service


def main() -> None:
    serve(wired(IpManagerSettings()))


if __name__ == "__main__":
    main()

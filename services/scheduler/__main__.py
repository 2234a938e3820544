"""`python -m services.scheduler`: wiring only (settings from VK8S_SCHEDULER_*)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

from libs.events import utc_now
from libs.kube import kube_client
from libs.runtime import Service, serve
from services.scheduler.adapters.clusters import LiveClusters
from services.scheduler.adapters.inventory import KubeInventory
from services.scheduler.adapters.ledger import Ledger
from services.scheduler.adapters.metrics import SchedulerMetrics, StateCollector
from services.scheduler.adapters.placeholders import PlaceholderPods
from services.scheduler.handlers import RETRIES, TOPOLOGY, SchedulerHandlers
from services.scheduler.logic import Inventory
from services.scheduler.scheduler import Scheduler
from services.scheduler.settings import SchedulerSettings


@contextlib.asynccontextmanager
async def wired(settings: SchedulerSettings, *, configure_logs: bool = True) -> AsyncIterator[Service]:
    """The service with its consumer and tasks registered, not started: `await service.run()`."""
    # Entered first, closed last: the watches stop before their client does.
    async with (
        await kube_client(settings.kubeconfig) as api,
        Service(TOPOLOGY.service, settings, configure_logs=configure_logs) as service,
    ):
        capacity_grew = asyncio.Event()
        inventory = Inventory()
        metrics = SchedulerMetrics(service.metrics_registry)
        ledger = await Ledger.open(
            service.js,
            settings.kv_bucket,
            inventory,
            replicas=settings.kv_replicas,
            on_growth=capacity_grew.set,
            on_conflict=lambda kind: metrics.ledger_conflicts.labels(kind).inc(),
        )
        placeholders = PlaceholderPods(api, settings.placeholder_image) if settings.placeholders else None
        kube = KubeInventory(
            api,
            inventory,
            node_selector=settings.node_selector,
            on_growth=capacity_grew.set,
            on_vnode_pod=placeholders.release if placeholders is not None else None,
        )
        synced = (kube.nodes_synced, kube.pods_synced, ledger.synced)
        scheduler = Scheduler(
            inventory,
            ledger,
            metrics,
            synced=synced,
            capacity_grew=capacity_grew,
            hold_s=settings.hold_s,
            head_protection_s=settings.head_protection_s,
            commit_attempts=settings.commit_attempts,
            sync_timeout_s=settings.sync_timeout_s,
            clock=utc_now,
            placeholders=placeholders,
            clusters=LiveClusters(api),
        )
        service.metrics_registry.register(StateCollector(inventory, ledger))
        service.http.add_readiness_check("inventory", lambda: all(event.is_set() for event in synced))
        service.consume(TOPOLOGY, SchedulerHandlers(scheduler=scheduler, clock=utc_now))
        service.add_task("watch-nodes", kube.watch_nodes)
        service.add_task("watch-pods", kube.watch_pods)
        service.add_task("watch-ledger", ledger.watch)
        service.add_task(
            "retry-pending",
            functools.partial(
                scheduler.run_retries,
                service.publisher.only(RETRIES).publish,
                interval_s=settings.retry_interval_s,
                debounce_s=settings.retry_debounce_s,
            ),
        )
        service.add_task("sweep", functools.partial(scheduler.run_sweeps, interval_s=settings.sweep_interval_s))
        yield service


def main() -> None:
    serve(wired(SchedulerSettings()))


if __name__ == "__main__":
    main()

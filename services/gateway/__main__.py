"""`python -m services.gateway`: wiring only (settings from VK8S_GATEWAY_*)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from libs.events import StreamSettings, ensure_kv
from libs.kube import kube_client
from libs.runtime import Service, serve
from services.gateway.adapters.kubernetes import ClusterObjects
from services.gateway.adapters.ledger import Ledger
from services.gateway.adapters.metrics import GatewayMetrics
from services.gateway.adapters.requests import RequestIntake
from services.gateway.handlers import ANNOUNCER, TOPOLOGY, GatewayHandlers
from services.gateway.settings import GatewaySettings


@contextlib.asynccontextmanager
async def wired(settings: GatewaySettings, *, configure_logs: bool = True) -> AsyncIterator[Service]:
    """The service with its consumer and tasks registered, not started: `await service.run()`."""
    # The API client is closed last, after the service has stopped the tasks using it.
    async with (
        await kube_client(settings.kubeconfig) as api,
        Service(
            TOPOLOGY.service,
            settings,
            stream=StreamSettings(duplicate_window_s=settings.duplicate_window_s, replicas=settings.stream_replicas),
            configure_logs=configure_logs,
        ) as service,
    ):
        handlers = GatewayHandlers(
            objects=ClusterObjects(
                api,
                platform_bindings=settings.platform_bindings,
                tenant_bindings=settings.tenant_bindings,
                reserved_namespaces=settings.reserved_namespaces,
            ),
            ledger=Ledger(await ensure_kv(service.js, settings.kv_bucket, replicas=settings.kv_replicas)),
            publisher=service.publisher.only(ANNOUNCER),
            metrics=GatewayMetrics(service.metrics_registry),
            settings=settings,
        )
        service.consume(TOPOLOGY, handlers)
        service.add_task("watch-vk8s", handlers.watch)
        assert service.nc is not None
        service.add_task("request-intake", RequestIntake(service.nc).run)
        yield service


def main() -> None:
    serve(wired(GatewaySettings()))


if __name__ == "__main__":
    main()

"""`python -m services.gateway`: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from libs.events import ensure_kv
from libs.kube import kube_client
from libs.runtime import Service
from services.gateway.adapters.kubernetes import ClusterObjects
from services.gateway.adapters.ledger import Ledger
from services.gateway.adapters.metrics import GatewayMetrics
from services.gateway.adapters.requests import RequestIntake
from services.gateway.handlers import Gateway
from services.gateway.settings import GatewaySettings

NAME = "gateway"
DURABLE = "gateway"


@contextlib.asynccontextmanager
async def gateway_service(settings: GatewaySettings) -> AsyncIterator[Service]:
    """The gateway, connected and registered; `start()` or `run()` it."""
    # The API client is closed last, after the service has stopped the tasks using it.
    async with await kube_client(settings.kubeconfig) as api, Service(NAME, settings) as service:
        gateway = Gateway(
            objects=ClusterObjects(api),
            ledger=Ledger(await ensure_kv(service.js, settings.kv_bucket)),
            publisher=service.publisher,
            metrics=GatewayMetrics(service.metrics_registry),
            settings=settings,
        )
        service.consume(DURABLE, gateway.subscriptions())
        service.add_task("watch-vk8s", gateway.watch)
        assert service.nc is not None
        service.add_task("request-intake", RequestIntake(service.nc).run)
        yield service


async def main() -> None:
    async with gateway_service(GatewaySettings()) as service:
        await service.run()


if __name__ == "__main__":
    asyncio.run(main())

"""python -m services.bootstrap"""

from __future__ import annotations

import asyncio

from libs.events import utc_now
from libs.kube import kube_client
from libs.runtime import Service
from services.bootstrap.adapters.host import HostCluster
from services.bootstrap.adapters.metrics import BootstrapMetrics
from services.bootstrap.adapters.node_exec import NodeExec
from services.bootstrap.handlers import BootstrapHandlers
from services.bootstrap.settings import BootstrapSettings


async def main(settings: BootstrapSettings | None = None) -> None:
    settings = settings or BootstrapSettings()
    api = await kube_client(settings.kubeconfig)
    async with api, Service("bootstrap", settings) as service:
        handlers = BootstrapHandlers(
            HostCluster(api),
            NodeExec(api, settings.vnode_container, settings.exec_timeout_s),
            settings,
            service.publisher,
            BootstrapMetrics(service.metrics_registry),
            utc_now,
        )
        service.consume("bootstrap", handlers.handlers())
        await service.run()


if __name__ == "__main__":
    asyncio.run(main())

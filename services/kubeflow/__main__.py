"""python -m services.kubeflow"""

from __future__ import annotations

import asyncio

from libs.api.versions import default_matrix
from libs.events import utc_now
from libs.kube import kube_client
from libs.runtime import Service
from services.kubeflow.adapters.host import HostCluster
from services.kubeflow.adapters.metrics import KubeflowMetrics
from services.kubeflow.handlers import KubeflowHandlers
from services.kubeflow.settings import KubeflowSettings


async def main(settings: KubeflowSettings | None = None) -> None:
    settings = settings or KubeflowSettings()
    api = await kube_client(settings.kubeconfig)
    async with api, Service("kubeflow", settings) as service:
        handlers = KubeflowHandlers(
            HostCluster(api),
            settings,
            settings.sources(),
            service.publisher,
            KubeflowMetrics(service.metrics_registry, default_matrix().known_kubeflow()),
            utc_now,
        )
        service.consume("kubeflow", handlers.handlers())
        await service.run()


if __name__ == "__main__":
    asyncio.run(main())

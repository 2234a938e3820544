"""`python -m services.kubeflow`: wiring only (settings from VK8S_KUBEFLOW_*)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from libs.api.versions import default_matrix
from libs.events import utc_now
from libs.kube import kube_client
from libs.runtime import Service, serve
from services.kubeflow.adapters.host import HostCluster
from services.kubeflow.adapters.metrics import KubeflowMetrics
from services.kubeflow.handlers import PROGRESS, TOPOLOGY, KubeflowHandlers
from services.kubeflow.settings import KubeflowSettings


@contextlib.asynccontextmanager
async def wired(settings: KubeflowSettings, *, configure_logs: bool = True) -> AsyncIterator[Service]:
    """The service with its consumer registered, not started: `await service.run()`."""
    async with (
        await kube_client(settings.kubeconfig) as api,
        Service(TOPOLOGY.service, settings, configure_logs=configure_logs) as service,
    ):
        handlers = KubeflowHandlers(
            host=HostCluster(api),
            settings=settings,
            sources=settings.sources(),
            publisher=service.publisher.only(PROGRESS),
            metrics=KubeflowMetrics(service.metrics_registry, default_matrix().known_kubeflow()),
            clock=utc_now,
        )
        service.consume(TOPOLOGY, handlers)
        yield service


def main() -> None:
    serve(wired(KubeflowSettings()))


if __name__ == "__main__":
    main()

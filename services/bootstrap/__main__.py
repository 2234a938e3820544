"""`python -m services.bootstrap`: wiring only (settings from VK8S_BOOTSTRAP_*)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from libs.events import utc_now
from libs.kube import kube_client
from libs.runtime import Service, serve
from services.bootstrap.adapters.host import HostCluster
from services.bootstrap.adapters.metrics import BootstrapMetrics
from services.bootstrap.adapters.node_exec import NodeExec
from services.bootstrap.handlers import PROGRESS, TOPOLOGY, BootstrapHandlers
from services.bootstrap.settings import BootstrapSettings


@contextlib.asynccontextmanager
async def wired(settings: BootstrapSettings, *, configure_logs: bool = True) -> AsyncIterator[Service]:
    """The service with its consumer registered, not started: `await service.run()`."""
    async with (
        await kube_client(settings.kubeconfig) as api,
        Service(TOPOLOGY.service, settings, configure_logs=configure_logs) as service,
    ):
        handlers = BootstrapHandlers(
            host=HostCluster(api),
            node_exec=NodeExec(api, settings.vnode_container, settings.exec_timeout_s),
            settings=settings,
            publisher=service.publisher.only(PROGRESS),
            metrics=BootstrapMetrics(service.metrics_registry),
            clock=utc_now,
        )
        service.consume(TOPOLOGY, handlers)
        yield service


def main() -> None:
    serve(wired(BootstrapSettings()))


if __name__ == "__main__":
    main()

"""An ApiClient from a kubeconfig file, or from the pod's service account inside a cluster."""

from __future__ import annotations

import os

from kubernetes.aio import client, config
from kubernetes.aio.client import ApiClient as ApiClient  # re-exported: the client services hold


async def kube_client(kubeconfig: str | None = None) -> ApiClient:
    """Uses `kubeconfig` (or $KUBECONFIG) when given, else the in-cluster service account."""
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        await config.load_kube_config(config_file=path, client_configuration=configuration, persist_config=False)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return ApiClient(configuration)

"""Pods the tests start on the testbed: waiting for one to run."""

from __future__ import annotations

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.support.wait import eventually


async def running_pod(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 30.0) -> client.V1Pod:
    """The pod once it runs (and is not being deleted: a pod on its way out is not the one awaited)."""

    async def probe() -> client.V1Pod | None:
        try:
            pod = await core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        running = pod.status is not None and pod.status.phase == "Running"
        leaving = pod.metadata is not None and pod.metadata.deletion_timestamp is not None
        return pod if running and not leaving else None

    return await eventually(probe, f"pod {namespace}/{name} Running", timeout)

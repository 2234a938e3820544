"""libs.kube.watch against the testbed's apiserver behind tests.support.apiserver_faults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from kubernetes.aio import client

from libs.kube.watch import WatchEvent, watch_objects
from tests.support.apiserver_faults import ApiserverFaultProxy
from vk8s.testbed.config import StateLayout
from vk8s.testbed.fixtures import ControlPlane, new_api_client


async def test_a_watch_reset_mid_stream_lists_again(
    kube_control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """The connection of a running watch is reset (what an apiserver rollout does): the watch
    lists again and goes on, rather than raising out of every service task that watches."""
    if kube_control_plane.source != "testbed":
        pytest.skip("the fault proxy serves with the testbed's PKI")
    kubeconfig = kube_control_plane.kubeconfig
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    proxy = ApiserverFaultProxy(server, StateLayout(kubeconfig.parent).pki).start()
    seen: asyncio.Queue[WatchEvent] = asyncio.Queue()
    try:
        async with await new_api_client(proxy.kubeconfig(kubeconfig, tmp_path / "kubeconfig")) as api:

            async def consume() -> None:
                list_fn = client.CoreV1Api(api).list_namespaced_config_map
                async for event in watch_objects(list_fn, namespace, retry_delay_s=0.1):
                    await seen.put(event)

            watching = asyncio.create_task(consume())

            async def next_event() -> WatchEvent:
                getting = asyncio.ensure_future(seen.get())
                await asyncio.wait({getting, watching}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    raise AssertionError(f"the watch ended: {watching.exception()!r}")
                return getting.result()

            try:
                async with asyncio.timeout(30):
                    while not (await next_event()).synced:
                        pass
                await asyncio.sleep(2)  # the watch request is open by now
                proxy.inject(0.5)
                await asyncio.sleep(1)
                await client.CoreV1Api(kube_api).create_namespaced_config_map(
                    namespace, {"metadata": {"name": "after-the-reset"}}
                )
                async with asyncio.timeout(60):
                    while (event := await next_event()).object is None or event.object.metadata.name != "after-the-reset":
                        pass
            finally:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
    finally:
        proxy.stop()
    assert proxy.injected["reset"] >= 1

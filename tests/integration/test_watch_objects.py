"""libs.kube.watch against the testbed's apiserver behind tests.support.apiserver_faults."""

from __future__ import annotations

import asyncio
from typing import cast

import structlog
from kubernetes.aio import client

from libs.kube.watch import WatchEvent, watch_objects
from tests.support.apiserver_faults import ApiserverFaultProxy


async def test_a_watch_reset_mid_stream_lists_again(
    faulty_api: tuple[ApiserverFaultProxy, client.ApiClient], kube_api: client.ApiClient, namespace: str
) -> None:
    """The connection of a running watch is reset (what an apiserver rollout does): the watch
    lists again and goes on, rather than raising out of every service task that watches."""
    proxy, api = faulty_api
    seen: asyncio.Queue[WatchEvent] = asyncio.Queue()

    async def consume() -> None:
        async for event in watch_objects(client.CoreV1Api(api).list_namespaced_config_map, namespace, retry_delay_s=0.1):
            await seen.put(event)

    # Captured, also because structlog's default printer may hold an earlier test's closed stdout.
    with structlog.testing.capture_logs() as logs:
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
                namespace, cast(client.V1ConfigMap, {"metadata": {"name": "after-the-reset"}})  # a dict body is sent as it is
            )
            async with asyncio.timeout(60):
                while (event := await next_event()).object is None or event.object.metadata.name != "after-the-reset":
                    pass
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    assert proxy.injected["reset"] >= 1
    assert "Watch interrupted; listing again" in [entry["event"] for entry in logs]

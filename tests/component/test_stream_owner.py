"""Only the gateway (STREAM_OWNER) creates the event stream; every other service waits for it at
start, not ready and consuming nothing until it exists, and stops cleanly if told to while waiting.
(The `nats_url` server of each test has no stream until the test makes it.)"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import aiohttp
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from libs.events import STREAM_NAME, STREAM_OWNER, ServiceTopology, StreamSettings, Subscription, ensure_stream
from libs.runtime import Service, ServiceSettings
from tests.support.wait import eventually

DURABLE = "waiter"


def waiter(url: str) -> Service:
    return Service(DURABLE, ServiceSettings(nats_url=url, http_port=0), configure_logs=False)


async def handle(event: object) -> list[object]:
    return []


async def readiness(service: Service) -> tuple[int, dict[str, bool]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{service.http.port}/readyz") as answer:
        return answer.status, json.loads(await answer.text())["checks"]


async def test_a_service_other_than_the_owner_waits_for_the_stream_and_makes_none(
    nats_url: str, nc: NATS
) -> None:
    assert DURABLE != STREAM_OWNER
    topology = ServiceTopology(DURABLE, (Subscription("cluster.requested", "handle", ()),))
    async with waiter(nats_url) as service:
        service.consume(topology, SimpleNamespace(handle=handle))
        starting = asyncio.create_task(service.start())
        await eventually(lambda: service.http.port is not None, "the operator endpoints", 10)
        await asyncio.sleep(0.5)
        assert await readiness(service) == (503, {"nats": True, "stream": False, f"consumer:{DURABLE}": False})
        with pytest.raises(NotFoundError):
            await nc.jetstream().stream_info(STREAM_NAME)

        await ensure_stream(nc.jetstream(), StreamSettings(duplicate_window_s=42))  # as the gateway would
        await asyncio.wait_for(starting, timeout=10)
        assert await eventually(lambda: readiness(service), "the service ready", 10, done=lambda seen: seen[0] == 200)
        info = await nc.jetstream().stream_info(STREAM_NAME)
        assert info.config.duplicate_window == 42  # unchanged by the service


async def test_a_service_stopped_while_waiting_for_the_stream_stops(nats_url: str) -> None:
    async with waiter(nats_url) as service:
        starting = asyncio.create_task(service.start())
        await eventually(lambda: service.http.port is not None, "the operator endpoints", 10)
        service.stop()
        await asyncio.wait_for(starting, timeout=5)


async def test_the_owner_makes_the_stream_with_its_settings_and_no_other_service_may(nats_url: str, nc: NATS) -> None:
    with pytest.raises(ValueError, match=f"stream: only '{STREAM_OWNER}' creates or configures the event stream"):
        Service(DURABLE, ServiceSettings(nats_url=nats_url), stream=StreamSettings(), configure_logs=False)

    settings = ServiceSettings(nats_url=nats_url, http_port=0)
    async with Service(STREAM_OWNER, settings, stream=StreamSettings(duplicate_window_s=42), configure_logs=False):
        info = await nc.jetstream().stream_info(STREAM_NAME)
        assert info.config.duplicate_window == 42

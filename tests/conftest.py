"""Fixtures shared by every tier: a real NATS JetStream server for the session, and a clean
JetStream (no streams, no KV buckets) for each test that asks for one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.support.nats import nats_server_url


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with nats_server_url() as url:
        yield url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url, name="vk8s-tests")
    js = client.jetstream()
    # Tests share one server: each starts from an empty JetStream.
    for name in [info.config.name for info in await js.streams_info()]:
        await js.delete_stream(name)
    yield client
    await client.drain()


@pytest.fixture
def js(nc: NATS) -> JetStreamContext:
    return nc.jetstream()

"""Fixtures shared by every tier: a real NATS JetStream server of each test's own (nats-server
starts in ~25 ms), so no stream, consumer or bucket of one test is ever seen by another."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from tests.support.nats import nats_server_url


@pytest.fixture
def nats_url() -> Iterator[str]:
    with nats_server_url() as url:
        yield url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url, name="vk8s-tests")
    yield client
    await client.drain()


@pytest.fixture
def js(nc: NATS) -> JetStreamContext:
    return nc.jetstream()

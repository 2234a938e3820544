"""A read model of the test's own, on the test's nats-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

from libs.events import ensure_kv
from services.projector.adapters.read_model import ClusterStore


@pytest.fixture
async def store(js: JetStreamContext) -> AsyncIterator[ClusterStore]:
    bucket = f"vk8s-clusters-test-{uuid.uuid4().hex[:8]}"
    yield ClusterStore(await ensure_kv(js, bucket))
    await js.delete_key_value(bucket)

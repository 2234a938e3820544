import uuid
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from libs.events import ensure_kv


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/component/" in str(item.path):
            item.add_marker(pytest.mark.component)


@pytest.fixture
async def kv(js: JetStreamContext) -> AsyncIterator[KeyValue]:
    """A KV bucket of the test's own on the real JetStream, deleted after it."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    yield await ensure_kv(js, bucket)
    await js.delete_key_value(bucket)

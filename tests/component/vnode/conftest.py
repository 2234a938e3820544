import pytest
from nats.js.kv import KeyValue

from services.vnode.adapters.store import RecordStore
from tests.component.vnode.support import FakeHost, live_vk8s


@pytest.fixture
def host() -> FakeHost:
    return FakeHost(vk8s=live_vk8s())


@pytest.fixture
def store(kv: KeyValue) -> RecordStore:
    return RecordStore(kv)

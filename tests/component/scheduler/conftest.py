from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

from tests.component.scheduler.support import Clock, ReplicaFactory, replicas


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def replica(js: JetStreamContext, clock: Clock) -> AsyncIterator[ReplicaFactory]:
    async with replicas(js, clock) as start:
        yield start

"""Running a service in-process for a test, as `python -m services.<name>` would."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from libs.runtime import Service


@contextlib.asynccontextmanager
async def running(wired: contextlib.AbstractAsyncContextManager[Service]) -> AsyncIterator[Service]:
    """A service's `wired(settings)`, started; leaving the block runs the service's shutdown."""
    async with wired as service:
        await service.start()
        yield service

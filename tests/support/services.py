"""Running a service in-process for a test, as `python -m services.<name>` would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def running(main: Coroutine[Any, Any, None], *, settle_s: float = 0.5) -> AsyncIterator[asyncio.Task[None]]:
    """Starts a service's `main(settings)` as a task; cancelling it runs the service's shutdown."""
    task = asyncio.create_task(main)
    await asyncio.sleep(settle_s)
    if task.done():
        task.result()  # start-up failed: raise it here
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""Waiting in tests for what another process makes true: the apiserver, NATS, a service."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

# Enough of the last value seen to say what was there instead, not a page of it.
_SHOWN_CHARS = 500


# Overloads so that an async probe's awaited result, not its coroutine, is what `done` sees and
# what the wait returns; and, waiting for something truthy (no `done`), never None.
@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0, *, interval: float = 0.1
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    what: str,
    timeout: float = 30.0,
    *,
    done: Callable[[T], object],
    interval: float = 0.1,
) -> T: ...


@overload
async def eventually(probe: Callable[[], T | None], what: str, timeout: float = 30.0, *, interval: float = 0.1) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    what: str,
    timeout: float = 30.0,
    *,
    done: Callable[[T], object],
    interval: float = 0.1,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    what: str,
    timeout: float = 30.0,
    *,
    done: Callable[[Any], object] = bool,
    interval: float = 0.1,
) -> Any:
    """Calls `probe` (sync or async) until `done` holds for what it returns (by default: until it
    returns something truthy, not None, False or empty) and returns that; after `timeout` seconds
    fails naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen: Any = probe()
        if inspect.isawaitable(seen):
            seen = await seen
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {seen!r:.{_SHOWN_CHARS}}")
        await asyncio.sleep(interval)

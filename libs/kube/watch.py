"""List-then-watch that survives expired resource versions and dropped connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import structlog
from kubernetes.aio import watch
from kubernetes.aio.client.exceptions import ApiException

log = structlog.get_logger(__name__)

EventType = Literal["SYNC", "ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True)
class WatchEvent:
    type: EventType  # SYNC: an object seen by a (re)list, before the watch resumes
    object: Any
    synced: bool = False  # on the last SYNC of a list: every object of the list was seen


async def watch_objects(
    list_fn: Callable[..., Any], *args: Any, timeout_s: int = 300, retry_delay_s: float = 1.0, **kwargs: Any
) -> AsyncIterator[WatchEvent]:
    """Yields every object of a list as SYNC (the last one with synced=True; a list that is empty
    yields a single SYNC with object None), then watch events. When the watch expires (410) or
    breaks, it lists again, so a consumer that reconciles on SYNC never misses a change."""
    while True:
        try:
            listing = await list_fn(*args, **kwargs)
            items = listing["items"] if isinstance(listing, dict) else listing.items
            version = (
                listing["metadata"]["resourceVersion"] if isinstance(listing, dict) else listing.metadata.resource_version
            )
            if not items:
                yield WatchEvent("SYNC", None, synced=True)
            for index, item in enumerate(items):
                yield WatchEvent("SYNC", item, synced=index == len(items) - 1)
            watcher = watch.Watch()
            try:
                async with asyncio.timeout(timeout_s + 30):
                    async for event in watcher.stream(
                        list_fn, *args, resource_version=version, timeout_seconds=timeout_s, **kwargs
                    ):
                        if event["type"] == "ERROR":
                            break
                        yield WatchEvent(event["type"], event["object"])
            finally:
                watcher.stop()
                await watcher.close()
        # aiohttp.ClientError: the connection went mid-response (a reset watch stream, a server
        # that closed it), which aiohttp does not raise as an OSError.
        except (ApiException, OSError, TimeoutError, aiohttp.ClientError) as error:
            status = getattr(error, "status", None)
            # 410: the version expired; 429: throttled or storage (re)initialising; 5xx: the server.
            if status not in (410, 429, None) and status < 500:
                raise
            log.info("Watch interrupted; listing again", reason=str(error)[:200])
            await asyncio.sleep(retry_delay_s)

"""Running a service in-process for a test, as `python -m services.<name>` would."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

from libs.events import StreamSettings, ensure_stream
from libs.runtime import Service, ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


@contextlib.asynccontextmanager
async def running(wired: contextlib.AbstractAsyncContextManager[Service]) -> AsyncIterator[Service]:
    """A service's `wired(settings)`, started, once the event stream is made as the gateway (its one
    owner) makes it: the other services wait for it; leaving the block runs the service's shutdown."""
    async with wired as service:
        await ensure_stream(service.js, StreamSettings())
        await service.start()
        yield service


def local_settings(settings_class: type[S], nats_url: str, kubeconfig: Path, **overrides: Any) -> S:
    """A service's settings against the test's NATS and apiserver, serving HTTP on a free local
    port; `overrides` are the test's own (faster retries, a node selector, ...)."""
    return settings_class(nats_url=nats_url, kubeconfig=str(kubeconfig), http_host="127.0.0.1", http_port=0, **overrides)

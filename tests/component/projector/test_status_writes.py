"""The projector's handler on a real JetStream KV, with a status writer that lets one patch land
late: the status left on the object is always the newest fold, whatever order patches land in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from libs.events import Envelope, TransientError
from services.projector.adapters.feed import EventFeed
from services.projector.adapters.metrics import ProjectorMetrics
from services.projector.adapters.read_model import ClusterStore
from services.projector.adapters.status import Written
from services.projector.handlers import ProjectorHandlers
from services.projector.logic import render_status
from tests.unit.projector.sequence import Timeline
from tests.unit.projector.test_logic import fold


class LandingOrderWriter:
    """Keeps the status the apiserver would hold: the last patch to land wins. `before_landing`
    runs once, between a patch being sent and it landing (another projector's whole turn)."""

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None
        self.before_landing: Callable[[], Any] | None = None

    async def write(self, namespace: str, name: str, status: dict[str, Any]) -> tuple[Written, str]:
        if self.before_landing is not None:
            hook, self.before_landing = self.before_landing, None
            await hook()
        self.status = status
        return Written.PATCHED, ""


async def test_a_patch_that_lands_after_a_newer_one_is_put_right(store: ClusterStore, nc: NATS) -> None:
    t = Timeline()
    older: list[Envelope[Any]] = [t.accepted(), t.scheduled()]
    newest = t.ips_allocated()
    writer = LandingOrderWriter()
    metrics = ProjectorMetrics(CollectorRegistry())
    feed = EventFeed(nc)
    projector = ProjectorHandlers(store=store, writer=writer, feed=feed, metrics=metrics, confirm_attempts=1)
    await projector.handle(older[0])

    async def a_newer_event_handled_meanwhile() -> None:
        await ProjectorHandlers(store=store, writer=writer, feed=feed, metrics=metrics).handle(newest)

    writer.before_landing = a_newer_event_handled_meanwhile
    # The stale patch lands last; with its one confirmation spent, the handler must not ack.
    with pytest.raises(TransientError, match="kept changing"):
        await projector.handle(older[1])
    assert writer.status != render_status(fold([*older, newest]))

    await projector.handle(older[1])  # the redelivery
    assert writer.status == render_status(fold([*older, newest]))

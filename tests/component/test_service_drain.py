"""SIGTERM to a real service process: it stops fetching, lets the handler in flight finish within
the grace period, and hands back (nak) what outlasts it, against a real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from libs.events import STREAM_NAME, Envelope, Publisher, StreamSettings, ensure_stream
from libs.events.catalog import ClusterRequested
from tests.support.events import NOW, cluster_requested
from tests.support.wait import eventually

DURABLE = "drain-test"

SERVICE = textwrap.dedent(
    f"""
    import asyncio, sys
    from pathlib import Path
    from types import SimpleNamespace
    from libs.events import ServiceTopology, Subscription
    from libs.runtime import Service, ServiceSettings

    nats_url, grace_s, work_s, marks = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])

    async def handle(event):
        (marks / f"started-{{event.id}}").touch()
        await asyncio.sleep(work_s)
        (marks / f"finished-{{event.id}}").touch()
        return []

    async def main():
        topology = ServiceTopology("drain", (Subscription("cluster.requested", "handle", ()),))
        settings = ServiceSettings(nats_url=nats_url, http_port=0, shutdown_timeout_s=grace_s, log_format="json")
        async with Service("drain", settings) as service:
            service.consume(topology, SimpleNamespace(handle=handle), durable="{DURABLE}")
            await service.run()

    asyncio.run(main())
    """
)


def start_service(nats_url: str, grace_s: float, work_s: float, marks: Path) -> subprocess.Popen[bytes]:
    """The service with its log in `marks`/service.log; its handler marks each event started and finished."""
    root = Path(__file__).resolve().parents[2]
    marks.mkdir(exist_ok=True)
    with (marks / "service.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", SERVICE, nats_url, str(grace_s), str(work_s), str(marks)],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def settled(js: JetStreamContext) -> bool:
    info: ConsumerInfo = await js.consumer_info(STREAM_NAME, DURABLE)
    return info.num_ack_pending == 0 and info.num_pending == 0


async def exited(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    await eventually(lambda: process.poll() is not None, "the service to exit", timeout)
    return process.returncode, time.monotonic() - started


@pytest.fixture
async def stream(js: JetStreamContext) -> None:
    await ensure_stream(js, StreamSettings())


async def request(js: JetStreamContext) -> Envelope[ClusterRequested]:
    event = Envelope.new(cluster_requested("drain"), cluster_id="default/drain", now=NOW)
    await Publisher(js).publish(event)
    return event


async def test_sigterm_lets_the_handler_in_flight_finish(
    nats_url: str, js: JetStreamContext, stream: None, tmp_path: Path
) -> None:
    service = start_service(nats_url, grace_s=20, work_s=2, marks=tmp_path)
    try:
        event = await request(js)
        await eventually(lambda: (tmp_path / f"started-{event.id}").exists(), "the handler to start")
        service.send_signal(signal.SIGTERM)
        code, seconds = await exited(service, 30)
    finally:
        service.kill()
        service.wait()
    assert code == 0, (tmp_path / "service.log").read_text()
    assert (tmp_path / f"finished-{event.id}").exists()
    assert await settled(js)
    assert seconds < 10


async def test_sigterm_hands_back_what_outlasts_the_grace_period(
    nats_url: str, js: JetStreamContext, stream: None, tmp_path: Path
) -> None:
    first = start_service(nats_url, grace_s=1, work_s=600, marks=tmp_path / "first")
    try:
        event = await request(js)
        await eventually(lambda: (tmp_path / "first" / f"started-{event.id}").exists(), "the handler to start")
        first.send_signal(signal.SIGTERM)
        code, seconds = await exited(first, 30)
        assert code == 0, (tmp_path / "first" / "service.log").read_text()
        assert seconds < 10
        # nak'd, not left to ack_wait (30 s): the next replica starts it at once.
        second = start_service(nats_url, grace_s=20, work_s=0, marks=tmp_path / "second")
        try:
            await eventually(lambda: (tmp_path / "second" / f"finished-{event.id}").exists(), "the other replica")
            for _ in range(100):
                if await settled(js):
                    break
                await asyncio.sleep(0.05)
            assert await settled(js)
        finally:
            second.terminate()
            second.wait(timeout=30)
    finally:
        first.kill()
        first.wait()
    assert not (tmp_path / "first" / f"finished-{event.id}").exists()

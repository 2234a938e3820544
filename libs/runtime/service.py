"""Wiring shared by every service: NATS connection, stream, publisher, consumers, background
tasks, the operator HTTP server, and a graceful shutdown that drains NATS."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from libs.events import (
    REGISTRY,
    STREAM_OWNER,
    Backoff,
    Consumer,
    ConsumerSettings,
    EventMetrics,
    Publisher,
    ServiceTopology,
    StreamSettings,
    ensure_stream,
    routes,
    wait_for_stream,
)
from libs.events.catalog import service_inbox
from libs.runtime.http import OperatorServer
from libs.runtime.logging import configure_logging
from libs.runtime.settings import ServiceSettings

BackgroundTask = Callable[[], Awaitable[None]]


async def connect_nats(settings: ServiceSettings, *, name: str) -> NATS:
    # Its replies on an inbox of its own: its NATS permissions allow no other (libs.events.permissions).
    options: dict[str, Any] = {
        "name": f"vk8s-{name}",
        "max_reconnect_attempts": -1,
        "connect_timeout": 5,
        "inbox_prefix": service_inbox(name),
    }
    if settings.nats_creds_file:
        options["user_credentials"] = settings.nats_creds_file
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = nats_password(settings)
    return await nats.connect(settings.nats_url, **options)


def nats_password(settings: ServiceSettings) -> str:
    """The password given, or read from `nats_password_file` (a Secret's file: one trailing newline dropped)."""
    if settings.nats_password_file is None:
        return settings.nats_password.get_secret_value() if settings.nats_password else ""
    try:
        text = Path(settings.nats_password_file).read_text()
    except OSError as error:
        raise RuntimeError(f"nats_password_file: cannot read {settings.nats_password_file}: {error.strerror}") from None
    return text.removesuffix("\n")


def serve(wired: contextlib.AbstractAsyncContextManager[Service]) -> None:
    """Runs a service wired by its `wired(settings)` until SIGTERM/SIGINT: the `main()` of every
    `services/<name>/__main__.py`."""

    async def run() -> None:
        async with wired as service:
            await service.run()

    asyncio.run(run())


class Service:
    """One running service. Use as `async with Service(...) as service:`, register consumers and
    tasks, then `await service.run()` until SIGTERM/SIGINT (or `service.stop()`)."""

    def __init__(
        self, name: str, settings: ServiceSettings, *, stream: StreamSettings | None = None, configure_logs: bool = True
    ):
        """`stream`: the event stream's configuration, given by its owner (STREAM_OWNER) alone, which creates the
        stream or brings it to that configuration at start; without it, the service waits for the stream."""
        if stream is not None and name != STREAM_OWNER:
            raise ValueError(f"stream: only {STREAM_OWNER!r} creates or configures the event stream, not {name!r}")
        self.name = name
        self.settings = settings
        self._stream = stream
        if configure_logs:
            configure_logging(settings.log_level, settings.log_format, service=name)
        self.log = structlog.get_logger(name).bind(service=name)
        self.metrics_registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.metrics_registry)
        self.event_metrics = EventMetrics(name, self.metrics_registry)
        self.http = OperatorServer(self.metrics_registry, settings.http_host, settings.http_port)
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._publisher: Publisher | None = None
        self._consumers: list[Consumer] = []
        self._tasks: list[tuple[str, BackgroundTask]] = []
        self._running: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "Service is not started"
        return self._js

    @property
    def publisher(self) -> Publisher:
        assert self._publisher is not None, "Service is not started"
        return self._publisher

    async def __aenter__(self) -> Service:
        self.nc = await connect_nats(self.settings, name=self.name)
        self._js = self.nc.jetstream()
        if self._stream is not None:
            await ensure_stream(self._js, self._stream)
        self._publisher = Publisher(self._js, self.event_metrics)
        self.http.add_readiness_check("nats", lambda: self.nc is not None and self.nc.is_connected)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    def consume(
        self, topology: ServiceTopology, handlers: object, *, durable: str | None = None, concurrency: int | None = None
    ) -> Consumer:
        """Consumes the subscriptions `topology` declares, with the methods of `handlers`, through
        the durable consumer named after the service (or `durable`)."""
        durable = durable or topology.service
        declared = routes(topology, handlers)
        consumer = Consumer(
            service=self.name,
            js=self.js,
            publisher=self.publisher,
            registry=REGISTRY,
            settings=ConsumerSettings(
                durable=durable,
                filter_subjects=topology.consumes,
                ack_wait_s=self.settings.ack_wait_s,
                max_deliver=self.settings.max_deliver,
            ),
            routes=declared,
            metrics=self.event_metrics,
            concurrency=concurrency or self.settings.consumer_concurrency,
            prefetch=self.settings.consumer_prefetch,
            backoff=Backoff(self.settings.backoff_base_s, self.settings.backoff_max_s),
            answers_invalid_requests=topology.answers_invalid_requests,
        )
        self._consumers.append(consumer)
        self.http.add_readiness_check(f"consumer:{durable}", lambda: consumer.ready)
        return consumer

    def add_task(self, name: str, task: BackgroundTask) -> None:
        """A long-running loop (a watch, a periodic resync). If it ends or fails, the service stops,
        so the orchestrator restarts it instead of it running half-alive."""
        self._tasks.append((name, task))

    def stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        """Serves the operator endpoints (routes added before this are served too), then starts
        the consumers and background tasks."""
        await self.http.start()
        if self._stream is None:
            # Only its owner creates the stream: not ready (and consuming nothing) until it exists.
            stream_found = asyncio.Event()
            self.http.add_readiness_check("stream", stream_found.is_set)
            if not await self._stream_exists_before_stop():
                return
            stream_found.set()
        for consumer in self._consumers:
            await consumer.start()
        for name, task in self._tasks:
            self._running.append(asyncio.create_task(self._supervise(name, task), name=name))
        if self._consumers:
            self._running.append(asyncio.create_task(self._observe_lag(), name="consumer-lag"))
        self.log.info("Started service", port=self.http.port, consumers=len(self._consumers), tasks=len(self._tasks))

    async def _stream_exists_before_stop(self) -> bool:
        """Waits for the event stream: True once it exists, False when the service is stopped first."""
        found = asyncio.ensure_future(wait_for_stream(self.js))
        stopped = asyncio.ensure_future(self._stop.wait())
        done, pending = await asyncio.wait({found, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if found in done:
            found.result()  # a look-up that failed otherwise than "not found" fails the start
            return True
        return False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.stop)
        await self.start()
        await self._stop.wait()

    async def _observe_lag(self) -> None:
        while True:
            for consumer in self._consumers:
                try:
                    await consumer.observe_lag()
                except Exception as error:  # noqa: BLE001 - a missed sample is not worth stopping for
                    self.log.debug("Reading consumer lag failed", error=repr(error))
            await asyncio.sleep(self.settings.lag_interval_s)

    async def _supervise(self, name: str, task: BackgroundTask) -> None:
        try:
            await task()
            if not self._stop.is_set():
                self.log.error("Background task ended; stopping service", task=name)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("Background task failed; stopping service", task=name)
        self.stop()

    async def shutdown(self) -> None:
        self._stop.set()
        self.log.info("Stopping service")
        # Each consumer drains: handlers in flight get the grace period, then their messages are
        # nak'd for another replica (before NATS is drained below).
        grace_s = self.settings.shutdown_timeout_s
        await asyncio.gather(*(c.stop(grace_s) for c in self._consumers), return_exceptions=True)
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._running.clear()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        await self.http.stop()
        self.log.info("Stopped service")

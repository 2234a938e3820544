"""The one consumer wrapper every service uses: decode -> validate -> handle -> publish -> ack.

- an invalid message is terminated and answered with `cluster.rejected` (for a request) or
  `cluster.failed`, so it is neither redelivered forever nor able to stop the consumer;
- TransientError (and any unexpected exception) naks with exponential backoff until the
  consumer's max_deliver, then it is handled as permanent;
- PermanentError terminates the message and publishes `cluster.failed`;
- a message is fetched only when a handler slot is free, and from then until it is settled
  in-progress acks keep it from being redelivered: no message waits unheld in a batch;
- the broker never drops a message by itself (its max_deliver is unlimited): the wrapper counts
  deliveries, so every message ends handled or answered with `cluster.failed`, also when earlier
  deliveries timed out (a crash, a drain);
- `stop` drains: no more fetching, handlers in flight get a grace period, the rest are cancelled
  and their messages nak'd for another replica;
- each message ends in exactly one outcome log line and one metrics observation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.backoff import backoff_delay
from libs.events.broker import STREAM_NAME, ConsumerSettings, Publisher, ensure_consumer
from libs.events.catalog import UNKNOWN_CLUSTER_ID, ClusterFailed, ClusterRejected, ClusterRequested
from libs.events.envelope import ID_MAX_LENGTH, Envelope
from libs.events.errors import InvalidEvent, PermanentError, TransientError, UndeclaredEvent, plain_message
from libs.events.metrics import EventMetrics
from libs.events.reasons import Reason
from libs.events.registry import Registry
from libs.events.topology import Route

Clock = Callable[[], datetime]

log = structlog.get_logger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Backoff:
    """Delay before redelivery n (1-based) of a message that failed transiently."""

    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, delivery: int) -> float:
        return backoff_delay(delivery, self.base_s, self.max_s)


class Consumer:
    def __init__(
        self,
        *,
        service: str,
        js: JetStreamContext,
        publisher: Publisher,
        registry: Registry,
        settings: ConsumerSettings,
        routes: Iterable[Route],
        metrics: EventMetrics,
        stream: str = STREAM_NAME,
        concurrency: int = 1,
        prefetch: int = 0,
        backoff: Backoff = Backoff(),
        clock: Clock = utc_now,
        answers_invalid_requests: bool = True,
    ):
        self._routes = {route.subject: route for route in routes}
        unknown = [s for s in self._routes if s not in registry.subjects()]
        if unknown:
            raise ValueError(f"handlers for unregistered subjects: {unknown}")
        self._service = service
        self._js = js
        self._publisher = publisher
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        metrics.start_at_zero(handled=self._routes, published=registry.subjects())
        self._stream = stream
        self._concurrency = concurrency
        self._prefetch = prefetch
        self._backoff = backoff
        self._clock = clock
        # One rejection per bad request: only the gateway's consumer answers; others just drop it.
        self._answers_invalid_requests = answers_invalid_requests
        self._held: _Held | None = None
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._fetcher: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._log = log.bind(service=service, consumer=settings.durable)

    @property
    def ready(self) -> bool:
        tasks = [self._fetcher, *self._workers] if self._fetcher else []
        return bool(tasks) and all(not task.done() for task in tasks)

    async def start(self) -> None:
        await ensure_consumer(self._js, self._stream, self._settings)
        sub = await self._js.pull_subscribe_bind(self._settings.durable, self._stream)
        self._held = _Held(max(0.5, self._settings.ack_wait_s / 3))
        name = self._settings.durable
        self._fetcher = asyncio.create_task(self._fetch(sub, self._held), name=f"{name}-fetch")
        self._workers = [asyncio.create_task(self._work(), name=f"{name}-{i}") for i in range(self._concurrency)]

    async def stop(self, grace_s: float | None = None) -> None:
        """Drains: stops fetching, gives back the messages not started yet, lets the handlers in
        flight finish within `grace_s` (None: as long as they take), then cancels the rest and
        naks their messages, so another replica takes them at once."""
        self._stopping.set()
        self._room.set()
        if self._fetcher is not None:
            await asyncio.gather(self._fetcher, return_exceptions=True)
        while not self._queue.empty():
            if (msg := self._queue.get_nowait()) is not None:
                await self._give_back(msg)
        for _ in self._workers:
            self._queue.put_nowait(None)
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._held is not None:
            self._held.cancel()

    async def observe_lag(self) -> None:
        """Updates the consumer's lag gauges from the broker's view of it."""
        info = await self._js.consumer_info(self._stream, self._settings.durable)
        self._metrics.consumer_pending.labels(self._settings.durable).set(info.num_pending or 0)
        self._metrics.consumer_ack_pending.labels(self._settings.durable).set(info.num_ack_pending or 0)

    async def _fetch(self, sub: JetStreamContext.PullSubscription, held: _Held) -> None:
        """Holds at most `concurrency + prefetch` messages, every one kept from expiring from the
        moment it is fetched (a message waiting in a batch would otherwise reach ack_wait and be
        redelivered to another replica while this one still means to handle it). Idle, it asks
        for one message (the fetch returns as it comes); then, while there is room, for what is
        queued already (a short fetch that returns at once with it)."""
        idle = True
        try:
            while not self._stopping.is_set():
                room = self._concurrency + self._prefetch - len(held)
                # Refill once half the prefetch is used: fewer, larger fetches.
                if room <= self._prefetch // 2:
                    self._room.clear()
                    await self._room.wait()
                    continue
                try:
                    messages = await (sub.fetch(1, timeout=1.0) if idle else sub.fetch(room, timeout=0.05))
                except TimeoutError:  # nats-py raises both its own and asyncio's: nothing to fetch
                    idle = True
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    return
                except nats.errors.Error as error:
                    # A broker hiccup (reconnect, leader change): fetch again shortly.
                    self._log.warning("Fetching messages failed; retrying", error=repr(error))
                    await asyncio.sleep(1.0)
                    continue
                idle = False
                for msg in messages:
                    held.add(msg)
                    self._queue.put_nowait(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _work(self) -> None:
        while (msg := await self._queue.get()) is not None:
            if self._stopping.is_set():
                await self._give_back(msg)
            else:
                await self._handle_held(msg)

    async def _give_back(self, msg: Msg) -> None:
        """A message fetched but not started when the drain began: at once to another replica."""
        with contextlib.suppress(Exception):
            await msg.nak()
        self._release(msg)

    def _release(self, msg: Msg) -> None:
        if self._held is not None:
            self._held.discard(msg)
        self._room.set()

    async def _handle_held(self, msg: Msg) -> None:
        started = time.perf_counter()
        try:
            await self.handle_message(msg)
        except asyncio.CancelledError:
            # The drain's grace period is over: another replica takes the message now. Whatever
            # the handler started may still be running; handlers and node commands are idempotent.
            with contextlib.suppress(Exception):
                await msg.nak()
            seconds = time.perf_counter() - started
            self._metrics.settled(msg.subject, "nak", seconds)
            self._log.warning(
                "Handled message",
                outcome="nak",
                reason=Reason.SHUTTING_DOWN,
                subject=msg.subject,
                delivery=msg.metadata.num_delivered,
                duration_ms=round(seconds * 1000, 2),
            )
            raise
        except Exception:  # noqa: BLE001 - a bug in one message must not stop the consumer
            self._log.exception("Handling a message failed unexpectedly; it will be redelivered")
        finally:
            self._release(msg)

    async def handle_message(self, msg: Msg) -> None:
        started = time.perf_counter()
        delivery = msg.metadata.num_delivered
        subject = msg.subject
        if delivery > 1:
            self._metrics.redeliveries.labels(subject).inc()
        context: dict[str, Any] = {"subject": subject, "delivery": delivery}
        outcome, details = "ack", dict[str, Any]()
        try:
            envelope = self._registry.decode(subject, msg.data)
        except InvalidEvent as invalid:
            outcome, details = await self._reject(msg, invalid)
        else:
            context.update(envelope.log_context())
            with structlog.contextvars.bound_contextvars(**envelope.log_context()):
                outcome, details = await self._run(msg, envelope, delivery)
        seconds = time.perf_counter() - started
        self._metrics.settled(subject, outcome, seconds)
        level = "info" if outcome == "ack" else "warning"
        getattr(self._log, level)(
            "Handled message", outcome=outcome, duration_ms=round(seconds * 1000, 2), **context, **details
        )

    async def _run(self, msg: Msg, envelope: Envelope[Any], delivery: int) -> tuple[str, dict[str, Any]]:
        route = self._routes.get(envelope.type)
        if route is None:
            # The filter let through a subject this service does not handle: nothing to do.
            await msg.ack()
            return "ack", {"skipped": True}
        if delivery > 2 * self._settings.max_deliver:
            # Delivered this often, most deliveries ended unsettled (the service crashed or
            # stopped while handling it): stop the loop, with an answer.
            message = f"delivered {delivery} times, never settled (the handler crashed or timed out)"
            outcome = await self._fail(msg, envelope, Reason.RETRIES_EXHAUSTED, message)
            return outcome, {"reason": Reason.RETRIES_EXHAUSTED, "error": message}
        try:
            results = list(await route.handler(envelope))
            if undeclared := sorted({r.type for r in results} - route.emits):
                raise UndeclaredEvent(f"the {envelope.type} handler returned {undeclared}, which it does not declare")
            await self._publisher.publish_all(results)
        except PermanentError as error:
            outcome = await self._fail(msg, envelope, error.reason, plain_message(error))
            return outcome, {"reason": error.reason, "error": str(error)}
        except Exception as error:  # noqa: BLE001 - every other failure is retried, boundedly
            reason = error.reason if isinstance(error, TransientError) else type(error).__name__
            if delivery >= self._settings.max_deliver:
                message = f"gave up after {delivery} attempts: {plain_message(error)}"
                outcome = await self._fail(msg, envelope, Reason.RETRIES_EXHAUSTED, message)
                return outcome, {"reason": Reason.RETRIES_EXHAUSTED, "error": str(error)}
            delay = error.delay if isinstance(error, TransientError) and error.delay is not None else None
            delay = self._backoff.delay(delivery) if delay is None else delay
            await msg.nak(delay=delay)
            return "nak", {"reason": reason, "error": str(error), "retry_in_s": delay}
        await msg.ack()
        return "ack", {"published": [r.type for r in results]} if results else {}

    async def _fail(self, msg: Msg, cause: Envelope[Any], reason: Reason, message: str) -> str:
        generation = getattr(cause.data, "generation", None)
        failure = ClusterFailed(
            stage=self._service, reason=reason, message=message, failed_event=cause.type, generation=generation
        )
        return await self._publish_then_term(msg, cause.follow(failure, now=self._clock()))

    async def _reject(self, msg: Msg, invalid: InvalidEvent) -> tuple[str, dict[str, Any]]:
        cluster_id = invalid.cluster_id or UNKNOWN_CLUSTER_ID
        problems = [str(p) for p in invalid.problems]
        request_id = _header(msg, "Nats-Msg-Id")
        now = self._clock()
        if invalid.subject == ClusterRequested.subject:
            if not self._answers_invalid_requests:
                await msg.term()
                return "invalid", {"problems": problems, "cluster_id": cluster_id, "answered": False}
            payload: ClusterRejected | ClusterFailed = ClusterRejected(request_id=request_id, problems=problems)
        else:
            payload = ClusterFailed(
                stage=self._service, reason=Reason.INVALID_EVENT, message="; ".join(problems), failed_event=invalid.subject
            )
        # The answer follows the message as far as its ids could be read (else its Nats-Msg-Id).
        causation_id = invalid.event_id or (request_id if request_id and len(request_id) <= ID_MAX_LENGTH else None)
        # Derived from the stream sequence: a redelivered bad message is rejected only once.
        event_id = f"{payload.subject}-{self._stream}-{msg.metadata.sequence.stream}"
        event = Envelope.new(
            payload,
            cluster_id=cluster_id,
            now=now,
            event_id=event_id,
            correlation_id=invalid.correlation_id or causation_id,
            causation_id=causation_id,
        )
        outcome = await self._publish_then_term(msg, event)
        return ("invalid" if outcome == "term" else outcome), {"problems": problems, "cluster_id": cluster_id}

    async def _publish_then_term(self, msg: Msg, event: Envelope[Any]) -> str:
        try:
            await self._publisher.publish(event)
        except Exception as error:  # noqa: BLE001 - without the failure event, let JetStream redeliver
            self._log.error("Publishing failure event failed; leaving message for redelivery", error=str(error))
            await msg.nak(delay=self._backoff.delay(msg.metadata.num_delivered))
            return "nak"
        await msg.term()
        return "term"


class _Held:
    """The messages a consumer has fetched and not settled, waiting or being handled: one timer
    sends an in-progress ack for each of them every `interval`. A timer, not a task per message:
    most messages are settled long before the first tick, and a task per message costs throughput."""

    def __init__(self, interval: float):
        self._interval = interval
        self._messages: dict[int, Msg] = {}
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(interval, self._tick)
        self._sending: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, msg: Msg) -> None:
        self._messages[id(msg)] = msg

    def discard(self, msg: Msg) -> None:
        self._messages.pop(id(msg), None)

    def _tick(self) -> None:
        if self._messages:
            task = self._loop.create_task(_in_progress(list(self._messages.values())))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._handle = self._loop.call_later(self._interval, self._tick)

    def cancel(self) -> None:
        self._handle.cancel()


async def _in_progress(messages: list[Msg]) -> None:
    for msg in messages:
        with contextlib.suppress(Exception):  # settled meanwhile, or the connection is going
            await msg.in_progress()


def _header(msg: Msg, name: str) -> str | None:
    return (msg.headers or {}).get(name)

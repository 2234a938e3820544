"""JetStream provisioning (idempotent) and the publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from libs.events.envelope import Envelope
from libs.events.errors import UndeclaredEvent
from libs.events.metrics import EventMetrics
from libs.events.topology import Publishes

log = structlog.get_logger(__name__)

STREAM_NAME = "VK8S"
# The one service that creates the event stream and sets its configuration (the entry of the pipeline,
# the first to publish); the NATS permissions of every other service refuse them, and those only wait
# for the stream at start (`wait_for_stream`).
STREAM_OWNER = "gateway"
STREAM_SUBJECTS = ("cluster.>",)
# The largest event the stream stores; JetStream refuses a larger one at publish, so a hostile
# publisher cannot hand every consumer a huge payload. Far above any legitimate event.
MAX_EVENT_BYTES = 256 * 1024


@dataclass(frozen=True)
class StreamSettings:
    name: str = STREAM_NAME
    subjects: tuple[str, ...] = STREAM_SUBJECTS
    duplicate_window_s: float = 120.0
    max_age_s: float = 14 * 24 * 3600.0
    replicas: int = 1
    max_event_bytes: int = MAX_EVENT_BYTES


@dataclass(frozen=True)
class ConsumerSettings:
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    # Counted by the consumer wrapper, which answers the last failure with `cluster.failed`; the
    # broker itself redelivers without limit, so no message ends silently.
    max_deliver: int = 8
    max_ack_pending: int = 1000
    # Redeliveries after an ack timeout (a crashed consumer) back off too.
    timeout_backoff_s: tuple[float, ...] = field(default=())


async def ensure_stream(js: JetStreamContext, settings: StreamSettings) -> js_api.StreamInfo:
    """Creates the event stream, or updates it to these settings: the owner's (STREAM_OWNER) start;
    idempotent, so each of its replicas may call it."""
    config = js_api.StreamConfig(
        name=settings.name,
        subjects=list(settings.subjects),
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        duplicate_window=settings.duplicate_window_s,
        max_age=settings.max_age_s,
        num_replicas=settings.replicas,
        max_msg_size=settings.max_event_bytes,
    )
    try:
        await js.stream_info(settings.name)
    except NotFoundError:
        try:
            return await js.add_stream(config)
        except Exception:  # noqa: BLE001 - whatever add_stream raised, the look-up below re-raises if still absent
            # Another service created it between our look-up and create: fall through to update.
            await js.stream_info(settings.name)
    return await js.update_stream(config)


async def wait_for_stream(js: JetStreamContext, name: str = STREAM_NAME, *, interval_s: float = 1.0) -> js_api.StreamInfo:
    """The stream's info once it exists (a service other than its owner never creates or changes it)."""
    logged = False
    while True:
        try:
            return await js.stream_info(name)
        except NotFoundError:
            if not logged:
                log.info("Waiting for the event stream; its owner creates it", stream=name, owner=STREAM_OWNER)
                logged = True
            await asyncio.sleep(interval_s)


async def ensure_consumer(
    js: JetStreamContext, stream: str, settings: ConsumerSettings
) -> js_api.ConsumerInfo:
    """Creates or updates a durable pull consumer; idempotent, so every replica may call it."""
    config = js_api.ConsumerConfig(
        durable_name=settings.durable,
        name=settings.durable,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_deliver=-1,
        max_ack_pending=settings.max_ack_pending,
        filter_subjects=list(settings.filter_subjects),
        backoff=list(settings.timeout_backoff_s) or None,
    )
    return await js.add_consumer(stream, config)


async def ensure_kv(
    js: JetStreamContext, bucket: str, *, history: int = 1, replicas: int = 1, ttl_s: float | None = None
) -> KeyValue:
    """Opens a KV bucket, creating it on first use."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            js_api.KeyValueConfig(
                bucket=bucket,
                history=history,
                replicas=replicas,
                ttl=ttl_s,
                storage=js_api.StorageType.FILE,
            )
        )


class Publisher:
    """Publishes envelopes on their subject with `Nats-Msg-Id` = event id, so the broker drops
    repeats within the stream's duplicate window. One made by `only` publishes only the events
    its declaration names."""

    def __init__(
        self,
        js: JetStreamContext,
        metrics: EventMetrics | None = None,
        *,
        timeout_s: float = 5.0,
        declared: Publishes | None = None,
    ):
        self._js = js
        self._metrics = metrics
        self._timeout = timeout_s
        self._declared = declared

    def only(self, declared: Publishes) -> Publisher:
        """This publisher, refusing every event `declared` does not name."""
        return Publisher(self._js, self._metrics, timeout_s=self._timeout, declared=declared)

    async def publish(self, envelope: Envelope[Any]) -> js_api.PubAck:
        if self._declared is not None and envelope.type not in self._declared.emits:
            raise UndeclaredEvent(f"{self._declared.by} published {envelope.type}, which it does not declare")
        ack = await self._js.publish(
            envelope.type,
            envelope.to_json(),
            timeout=self._timeout,
            headers={"Nats-Msg-Id": envelope.id},
        )
        if self._metrics is not None:
            self._metrics.published(envelope.type, duplicate=bool(ack.duplicate))
        return ack

    async def publish_all(self, envelopes: Sequence[Envelope[Any]]) -> None:
        # In order: a consumer of several of them sees them as the handler decided.
        for envelope in envelopes:
            await self.publish(envelope)

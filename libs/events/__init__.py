"""The event contract of the pipeline and the NATS JetStream plumbing every service shares."""

from libs.events.broker import (
    MAX_EVENT_BYTES,
    STREAM_NAME,
    STREAM_OWNER,
    ConsumerSettings,
    Publisher,
    StreamSettings,
    ensure_consumer,
    ensure_kv,
    ensure_stream,
    wait_for_stream,
)
from libs.events.catalog import EVENTS, REGISTRY, UNKNOWN_CLUSTER_ID
from libs.events.consumer import Backoff, Consumer, utc_now
from libs.events.envelope import Envelope, EventModel, Payload, cluster_id_of
from libs.events.errors import InvalidEvent, PermanentError, Problem, TransientError, UndeclaredEvent
from libs.events.metrics import EventMetrics, start_at_zero
from libs.events.reasons import Reason
from libs.events.registry import Registry
from libs.events.topology import (
    Handler,
    Publishes,
    Route,
    ServiceTopology,
    Subscription,
    declare,
    routes,
    subscriber,
)

__all__ = [
    "EVENTS",
    "MAX_EVENT_BYTES",
    "REGISTRY",
    "STREAM_NAME",
    "STREAM_OWNER",
    "UNKNOWN_CLUSTER_ID",
    "Backoff",
    "Consumer",
    "ConsumerSettings",
    "Envelope",
    "EventMetrics",
    "EventModel",
    "Handler",
    "InvalidEvent",
    "Payload",
    "PermanentError",
    "Problem",
    "Publisher",
    "Publishes",
    "Reason",
    "Registry",
    "Route",
    "ServiceTopology",
    "StreamSettings",
    "Subscription",
    "TransientError",
    "UndeclaredEvent",
    "cluster_id_of",
    "declare",
    "ensure_consumer",
    "ensure_kv",
    "ensure_stream",
    "routes",
    "start_at_zero",
    "subscriber",
    "utc_now",
    "wait_for_stream",
]

"""NATS users and their permissions, generated from what each service's topology declares.

A service may publish only the events it emits (`ServiceTopology.emits`), the acks of its own durable
consumer and the keys of its own KV bucket. A requester publishes no event: it may ask the gateway
on `vk8s.requests.<namespace>` for the namespaces of its scope only (and read the stream, for
`vk8s create --wait`). Every user may use the JetStream API (`$JS.API.>`) but for what no
service does (`_JETSTREAM_DENIED`): deleting or purging a stream or one of its messages. A
service may in addition not touch another service's durable consumer (create, change, pull
from, delete) nor another service's KV bucket (its stream, messages or watches). A requester may
neither create nor change a stream, nor pull from, take over or delete a service's durable
consumer, nor read a KV bucket directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from libs.events.broker import STREAM_NAME
from libs.events.catalog import REQUEST_SUBJECT, request_subject
from libs.events.topology import ServiceTopology

REQUESTER = "requester"
_REPLIES = ("_INBOX.>",)
# Flow control and heartbeats of push consumers (KV watches, ordered consumers) answer on $JS.FC.
_JETSTREAM_API = ("$JS.API.>", "$JS.FC.>")
# No service deletes or purges a stream (or a message of one): nobody may.
_JETSTREAM_DENIED = ("$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>")
# A requester reads the stream with an ordered (ephemeral) consumer only.
_REQUESTER_DENIED = (
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM_NAME}.>",
    f"$JS.API.CONSUMER.MSG.NEXT.{STREAM_NAME}.>",
    f"$JS.API.CONSUMER.DELETE.{STREAM_NAME}.>",
    # (no message is read by sequence or subject: that is how a KV bucket is read)
    "$JS.API.DIRECT.GET.>",
    "$JS.API.STREAM.MSG.GET.>",
)


def _durable_api(durable: str) -> list[str]:
    """The JetStream API subjects that make, change, pull from or delete the durable `durable`."""
    consumer = f"$JS.API.CONSUMER.%s.{STREAM_NAME}.{durable}"
    return [
        *(consumer % verb for verb in ("CREATE", "DURABLE.CREATE", "DELETE", "MSG.NEXT", "INFO")),
        f"{consumer % 'CREATE'}.>",  # the create form with its filter subject
    ]


def _bucket_api(bucket: str) -> list[str]:
    """Every JetStream API subject about KV bucket `bucket`'s stream: info, changes, messages, watches."""
    stream = f"KV_{bucket}"
    return [
        f"$JS.API.STREAM.*.{stream}",
        f"$JS.API.STREAM.MSG.*.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.*.{stream}",
        f"$JS.API.CONSUMER.*.{stream}.>",
        f"$JS.API.CONSUMER.*.*.{stream}.>",
    ]


def service_permissions(topology: ServiceTopology, others: Iterable[ServiceTopology] = ()) -> dict[str, Any]:
    """`others`: the other services, whose durable consumers and KV buckets it may not touch."""
    denied = list(_JETSTREAM_DENIED)
    for other in others:
        if other.service != topology.service:
            denied += _durable_api(other.service)
            if other.kv_bucket is not None:
                denied += _bucket_api(other.kv_bucket)
    publish = [*topology.emits, *_JETSTREAM_API, f"$JS.ACK.{STREAM_NAME}.{topology.service}.>"]
    if topology.kv_bucket is not None:
        publish += [f"$KV.{topology.kv_bucket}.>", f"$JS.ACK.KV_{topology.kv_bucket}.>"]
    subscribe = list(_REPLIES)
    if topology.service == "gateway":
        # It answers the requests: on the requesters' reply subjects.
        publish += list(_REPLIES)
        subscribe.append(f"{REQUEST_SUBJECT}.*")
    return {"publish": {"allow": publish, "deny": denied}, "subscribe": {"allow": subscribe}}


def requester_permissions(namespaces: Sequence[str]) -> dict[str, Any]:
    """May ask for clusters in `namespaces` only (`*`: in every namespace)."""
    asks = [request_subject(namespace) for namespace in namespaces]
    denied = [*_JETSTREAM_DENIED, *_REQUESTER_DENIED]
    return {"publish": {"allow": [*asks, *_JETSTREAM_API], "deny": denied}, "subscribe": {"allow": list(_REPLIES)}}


def nats_authorization(
    services: Iterable[tuple[ServiceTopology, str]], requesters: Mapping[str, tuple[str, Sequence[str]]]
) -> dict[str, Any]:
    """The `authorization` block of a nats-server config: one user per service of `services`
    (named after it, with its password), and per requester user its password and namespaces."""
    services = list(services)
    every = [topology for topology, _ in services]
    users = [
        {"user": topology.service, "password": password, "permissions": service_permissions(topology, every)}
        for topology, password in services
    ]
    users += [
        {"user": user, "password": password, "permissions": requester_permissions(namespaces)}
        for user, (password, namespaces) in requesters.items()
    ]
    return {"authorization": {"users": users}}

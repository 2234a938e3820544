"""NATS users and their permissions, generated from what each service's topology declares.

A service may publish only the events it emits (`ServiceTopology.emits`), the acks of its own durable
consumer and the keys of its own KV bucket. Every service may use the JetStream API (`$JS.API.>`) but
for what no service does (`_JETSTREAM_DENIED`): deleting or purging a stream or one of its messages. A
service may in addition not touch another service's durable consumer (create, change, pull from,
delete) nor another service's KV bucket (its stream, messages or watches), and it gets its replies on
an inbox of its own (`_INBOX.<service>`), so it cannot read what another service pulls. Only the
stream's owner (`STREAM_OWNER`) may create the event stream or change its configuration.

A requester publishes no event and uses no JetStream: it may ask the gateway on
`vk8s.requests.<namespace>` and follow the projector's relay of the events on
`vk8s.feed.<namespace>.<name>.<type>`, for the namespaces of its scope only, and gets its replies on an inbox
of its own (`vk8s.inbox.<user>`): it cannot read the stream, a KV bucket, or anyone else's replies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from libs.events.broker import STREAM_NAME, STREAM_OWNER
from libs.events.catalog import FEED_SUBJECT, INBOX_PREFIX, REQUEST_SUBJECT, request_subject, requester_inbox, service_inbox
from libs.events.topology import ServiceTopology

REQUESTER = "requester"
# Flow control and heartbeats of push consumers (KV watches, ordered consumers) answer on $JS.FC.
_JETSTREAM_API = ("$JS.API.>", "$JS.FC.>")
# No service deletes or purges a stream (or a message of one): nobody may.
_JETSTREAM_DENIED = ("$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>")
# Only STREAM_OWNER creates the event stream or changes its configuration.
_STREAM_CHANGES = (f"$JS.API.STREAM.CREATE.{STREAM_NAME}", f"$JS.API.STREAM.UPDATE.{STREAM_NAME}")


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
    if topology.service != STREAM_OWNER:
        denied += _STREAM_CHANGES
    for other in others:
        if other.service != topology.service:
            denied += _durable_api(other.service)
            if other.kv_bucket is not None:
                denied += _bucket_api(other.kv_bucket)
    publish = [*topology.emits, *_JETSTREAM_API, f"$JS.ACK.{STREAM_NAME}.{topology.service}.>"]
    if topology.kv_bucket is not None:
        publish += [f"$KV.{topology.kv_bucket}.>", f"$JS.ACK.KV_{topology.kv_bucket}.>"]
    subscribe = [f"{service_inbox(topology.service)}.>"]
    if topology.service == "gateway":
        # It answers the requests: on the requesters' inboxes.
        publish.append(f"{INBOX_PREFIX}.>")
        subscribe.append(f"{REQUEST_SUBJECT}.*")
    if topology.relays_feed:
        publish.append(f"{FEED_SUBJECT}.>")
    return {"publish": {"allow": publish, "deny": denied}, "subscribe": {"allow": subscribe}}


def requester_permissions(user: str, namespaces: Sequence[str]) -> dict[str, Any]:
    """May ask for clusters, and follow their events, in `namespaces` only (`*`: in every namespace)."""
    asks = [request_subject(namespace) for namespace in namespaces]
    feeds = [f"{FEED_SUBJECT}.{namespace}.>" for namespace in namespaces]
    return {"publish": {"allow": asks}, "subscribe": {"allow": [f"{requester_inbox(user)}.>", *feeds]}}


# What the chart's template replaces in the requester's permissions: its user, and each of its namespaces
# (a subject naming the namespace becomes one per namespace, in place).
CHART_USER, CHART_NAMESPACE = "{user}", "{namespace}"


def chart_permissions(services: Sequence[ServiceTopology]) -> dict[str, Any]:
    """What the Helm chart renders its NATS users from (deploy/helm/vk8s/files/nats-permissions.json):
    each service's permissions, and a requester's with CHART_USER and CHART_NAMESPACE standing for its
    user and namespaces, which the chart fills in as `requester_permissions` would."""
    return {
        "services": {topology.service: service_permissions(topology, services) for topology in services},
        "requester": requester_permissions(CHART_USER, (CHART_NAMESPACE,)),
    }


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
        {"user": user, "password": password, "permissions": requester_permissions(user, namespaces)}
        for user, (password, namespaces) in requesters.items()
    ]
    return {"authorization": {"users": users}}

"""What the CLI does for a user: publish a request, follow a cluster's events, read and delete
Vk8s objects. It finds NATS and the cluster through flags, env (NATS_URL, KUBECONFIG) or the
local stack's stack.json."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import nats
from kubernetes.aio import client
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from libs.api import Vk8s, kubeflow_user_secret_name
from libs.events import REGISTRY, Envelope, InvalidEvent, cluster_id_of, utc_now
from libs.events.catalog import ClusterRequested, feed_event_type, feed_subject, request_subject, requester_inbox
from libs.kube import GROUP, PLURAL, VERSION, kube_client, not_found, read_vk8s
from libs.kube.objects import owner_reference
from vk8s.local.stack import StackInfo, StackLayout, read_info


def namespace_of(vk8s: Vk8s) -> str:
    return vk8s.metadata.namespace or "default"


@dataclass(frozen=True)
class Endpoints:
    nats_url: str
    kubeconfig: str | None
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, nats_url: str | None = None, kubeconfig: str | None = None) -> Endpoints:
        """Arguments, else NATS_URL / NATS_USER / NATS_PASSWORD / KUBECONFIG, else the local stack's."""
        info = read_info(StackLayout())
        nats_url = nats_url or os.environ.get("NATS_URL") or (info.nats_url if info else None)
        kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or (info.kubeconfig if info else None)
        if not nats_url:
            raise RuntimeError("no NATS to talk to: run `vk8s up`, or set NATS_URL / --nats-url")
        user = os.environ.get("NATS_USER") or (info.nats_user if info else None) or None
        password = os.environ.get("NATS_PASSWORD") or (info.nats_password if info else None) or None
        return cls(nats_url, kubeconfig, user, password)

    @classmethod
    def of_stack(cls, info: StackInfo) -> Endpoints:
        return cls(info.nats_url, info.kubeconfig, info.nats_user or None, info.nats_password or None)


@asynccontextmanager
async def connected(endpoints: Endpoints) -> AsyncIterator[tuple[NATS, client.ApiClient]]:
    options: dict[str, Any] = {}
    if endpoints.nats_user:
        # A requester gets its replies on an inbox of its own (its NATS permissions allow no other).
        options = {
            "user": endpoints.nats_user,
            "password": endpoints.nats_password,
            "inbox_prefix": requester_inbox(endpoints.nats_user),
        }
    nc = await nats.connect(endpoints.nats_url, name="vk8s-cli", connect_timeout=5, max_reconnect_attempts=3, **options)
    api = await kube_client(endpoints.kubeconfig)
    try:
        yield nc, api
    finally:
        await api.close()
        await nc.drain()


async def ensure_password_secret(api: client.ApiClient, vk8s: Vk8s) -> None:
    """A plain password from the file goes to a Secret, never on the bus."""
    kubeflow = vk8s.spec.kubeflow
    if kubeflow is None or kubeflow.password is None:
        return
    name = kubeflow_user_secret_name(vk8s.metadata.name)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "vk8s", "clusterName": vk8s.metadata.name}),
        string_data={"password": kubeflow.password.get_secret_value()},
        type="Opaque",
    )
    core = client.CoreV1Api(api)
    try:
        await core.create_namespaced_secret(namespace_of(vk8s), body)
    except client.ApiException as error:
        if error.status != 409:
            raise
        await core.replace_namespaced_secret(name, namespace_of(vk8s), body)


async def adopt_password_secret(api: client.ApiClient, vk8s: Vk8s, timeout_s: float = 60.0) -> None:
    """Once the gateway made the Vk8s object, the Secret becomes its dependent (deleted with it)."""
    if vk8s.spec.kubeflow is None or vk8s.spec.kubeflow.password is None:
        return
    deadline = time.monotonic() + timeout_s
    while (obj := await get_object(api, vk8s.metadata.name, namespace_of(vk8s))) is None:
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.5)
    patch = {"metadata": {"ownerReferences": [owner_reference(obj)]}}
    await client.CoreV1Api(api).patch_namespaced_secret(
        kubeflow_user_secret_name(vk8s.metadata.name), namespace_of(vk8s), patch
    )


async def publish_request(nc: NATS, vk8s: Vk8s) -> Envelope[ClusterRequested]:
    """Asks the gateway for the cluster (it puts cluster.requested into the stream); RuntimeError
    says why when it is refused or nobody answers."""
    request = ClusterRequested(
        name=vk8s.metadata.name,
        namespace=namespace_of(vk8s),
        spec=vk8s.spec.redacted(vk8s.metadata.name),
        labels=dict(vk8s.metadata.labels or {}),
        annotations=dict(vk8s.metadata.annotations or {}),
    )
    envelope = Envelope.new(request, cluster_id=vk8s.cluster_id, now=utc_now(), event_id=f"cli-{uuid.uuid4()}")
    # Asked of the gateway on the namespace's subject: NATS lets a requester use its namespaces only.
    subject = request_subject(request.namespace)
    try:
        reply = await nc.request(subject, envelope.to_json(), timeout=15)
    except NoRespondersError:
        raise RuntimeError(f"no gateway answers on {subject}") from None
    except NatsTimeoutError:
        raise RuntimeError(
            f"no answer on {subject}: this NATS user may not request in namespace {request.namespace!r}, "
            "or the gateway is down"
        ) from None
    answer = json.loads(reply.data)
    if "error" in answer:
        raise RuntimeError(f"request refused: {answer['error']}")
    return envelope


async def follow(nc: NATS, cluster_id: str, *, live: asyncio.Event | None = None) -> AsyncGenerator[Envelope[Any]]:
    """The cluster's events as the projector relays them once handled (the requesters' feed: core NATS,
    scoped to their namespaces; they may not read the stream). `live` is set once the subscription is
    in place: every event relayed after that is delivered. An event relayed twice (a redelivery) is
    given once."""
    sub = await nc.subscribe(feed_subject(cluster_id))
    await nc.flush()  # the server has our interest
    if live is not None:
        live.set()
    seen: set[str] = set()
    try:
        async for msg in sub.messages:
            try:
                envelope = REGISTRY.decode(feed_event_type(msg.subject), msg.data)
            except InvalidEvent:
                continue
            if envelope.cluster_id == cluster_id and envelope.id not in seen:
                seen.add(envelope.id)
                yield envelope
    finally:
        await sub.unsubscribe()


async def get_object(api: client.ApiClient, name: str, namespace: str) -> dict[str, Any] | None:
    return await read_vk8s(api, namespace, name)


async def list_objects(api: client.ApiClient, namespace: str | None) -> list[dict[str, Any]]:
    custom = client.CustomObjectsApi(api)
    if namespace:
        listing = await custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    else:
        listing = await custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    return list(cast(dict[str, Any], listing)["items"])


async def delete_object(api: client.ApiClient, name: str, namespace: str) -> bool:
    try:
        await client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except client.ApiException as error:
        if not_found(error):
            return False
        raise
    return True


__all__ = [
    "Endpoints",
    "adopt_password_secret",
    "cluster_id_of",
    "connected",
    "delete_object",
    "ensure_password_secret",
    "follow",
    "get_object",
    "list_objects",
    "publish_request",
]

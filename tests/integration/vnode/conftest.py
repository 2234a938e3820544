"""The vnode service in-process against the testbed and a real NATS, and Vk8s objects to work on
(the kube_api fixture has applied the project's CRD)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from libs.api.models import Vk8sSpec
from libs.events import REGISTRY, Envelope, Payload, Publisher, utc_now
from libs.kube import GROUP, KIND, PLURAL, VERSION, name_of
from libs.kube.vnodes import platform_namespace
from libs.runtime import Service
from services.vnode.__main__ import wired
from services.vnode.settings import VNodeSettings
from tests.support.platform import make_platform_namespace
from tests.support.services import local_settings, running
from vk8s.testbed.config import FAKE_NODE_ANNOTATION, GPU_RESOURCE
from vk8s.testbed.fixtures import delete_namespace


@pytest.fixture
async def gpu_hosts(kube_api: client.ApiClient) -> list[str]:
    key, value = FAKE_NODE_ANNOTATION
    nodes = (await client.CoreV1Api(kube_api).list_node()).items
    hosts = sorted(
        name_of(node)
        for node in nodes
        if node.metadata and node.status
        and (node.metadata.annotations or {}).get(key) == value and GPU_RESOURCE in (node.status.capacity or {})
    )
    if len(hosts) < 2:
        pytest.skip("needs two simulated GPU nodes (the local testbed)")
    return hosts


@pytest.fixture
async def vnode_service(nc: NATS, nats_url: str, kube_config_path: Path) -> AsyncIterator[Service]:
    settings = local_settings(
        VNodeSettings,
        nats_url,
        kube_config_path,
        resync_interval_s=0.5,
        backoff_base_s=0.2,
        backoff_max_s=1.0,
        max_deliver=100,
        ready_timeout_s=60,
    )
    async with running(wired(settings, configure_logs=False)) as service:
        yield service


@dataclass
class Bus:
    """Publishes events as the other stages would, and collects what the vnode stage answers."""

    publisher: Publisher
    subscription: Subscription

    async def publish(self, payload: Payload, cluster_id: str) -> Envelope[Any]:
        envelope = Envelope.new(payload, cluster_id=cluster_id, now=utc_now())
        await self.publisher.publish(envelope)
        return envelope

    async def next(self, subject: str, timeout: float = 30.0) -> Envelope[Any]:
        """The next event on `subject`; events of other subjects in between are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {subject} within {timeout:.0f}s")
            try:
                msg = await self.subscription.next_msg(timeout=remaining)
            except TimeoutError:
                continue
            if msg.subject == subject:
                return REGISTRY.decode(msg.subject, msg.data)


@pytest.fixture
async def bus(nc: NATS, js: JetStreamContext, vnode_service: Service) -> AsyncIterator[Bus]:
    subscription = await nc.subscribe("cluster.>")
    yield Bus(Publisher(js), subscription)
    await subscription.unsubscribe()


@pytest.fixture
async def vk8s_object(
    kube_api: client.ApiClient, namespace: str
) -> AsyncIterator[Callable[..., Awaitable[dict[str, Any]]]]:
    """Creates a Vk8s object and, as the gateway does before accepting it, its platform namespace."""
    custom = client.CustomObjectsApi(kube_api)
    created: list[str] = []

    async def create(name: str, spec: Vk8sSpec, labels: dict[str, str] | None = None) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            # The gateway's finalizer: the object outlives the delete request until cluster.deleted.
            "metadata": {"name": name, "labels": labels or {}, "finalizers": [f"{GROUP}/cleanup"]},
            "spec": json.loads(spec.model_dump_json(by_alias=True, exclude_none=True)),
        }
        created.append(name)
        obj = cast(dict[str, Any], await custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))
        await make_platform_namespace(kube_api, obj)
        return obj

    yield create
    for name in created:
        await delete_namespace(kube_api, platform_namespace(namespace, name))
        try:
            await custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status != 404:
                raise

"""Bootstrap execs only into the vNodes of the cluster an event names: a forged cluster.vnodes.ready
naming another pod is refused before any step (the bootstrap service in-process, real NATS, the
testbed's API server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes.aio import client
from nats.js import JetStreamContext

from libs.events import REGISTRY, Envelope, Publisher
from libs.events.catalog import ClusterVNodesReady, VNodeRef
from libs.kube import GROUP, KIND, PLURAL, VERSION
from services.bootstrap.__main__ import wired
from services.bootstrap.settings import BootstrapSettings
from tests.support.events import NOW, spec_document
from tests.support.platform import make_platform_namespace
from tests.support.services import running
from vk8s.testbed.fixtures import delete_namespace


async def vk8s(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec_document()}
    return cast(dict[str, Any], await client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))


async def bystander_pod(api: client.ApiClient, namespace: str, labels: dict[str, str]) -> None:
    """Any pod of the namespace (the testbed never runs it: only its metadata matters here)."""
    body = {
        "metadata": {"name": "bystander", "labels": labels},
        "spec": {"nodeName": "no-such-node", "containers": [{"name": "vnode", "image": "registry.invalid/x:1"}]},
    }
    await client.CoreV1Api(api).create_namespaced_pod(namespace, cast(client.V1Pod, body))  # a dict body is sent as it is


async def events_of(js: JetStreamContext, cluster_id: str) -> list[Envelope[Any]]:
    found: list[Envelope[Any]] = []
    sub = await js.subscribe("cluster.>", ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except TimeoutError:
                return found
            event = REGISTRY.decode(msg.subject, msg.data)
            if event.cluster_id == cluster_id:
                found.append(event)
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize(
    ("where", "labelled", "expected"),
    [
        # Labels alone prove nothing: anyone who may create pods in their namespace may copy them.
        ("tenant", True, "it does not exist"),
        ("platform", False, "its labels do not name vNode 'master' of this cluster"),
        ("platform", True, "it is not run by a StatefulSet"),
    ],
    ids=["look-alike-in-the-tenant-namespace", "unlabelled", "labelled-as-the-vnode"],
)
async def test_a_forged_event_naming_a_pod_outside_the_cluster_is_refused(
    kube_api: client.ApiClient, kube_config_path: Path, namespace: str, nats_url: str, js: JetStreamContext,
    where: str, labelled: bool, expected: str, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cluster = await vk8s(kube_api, namespace, "c")
    platform = await make_platform_namespace(kube_api, cluster)
    try:
        labels = {f"{GROUP}/cluster-uid": cluster["metadata"]["uid"], "vnode": "master"} if labelled else {}
        await bystander_pod(kube_api, namespace if where == "tenant" else platform, labels)
        ready = ClusterVNodesReady(
            generation=1,
            vnodes=[VNodeRef(vnode="master", role="master", pod="bystander", host_node="n", ip="10.0.0.2", gpus=1)],
            pod_cidr="10.244.0.0/16",
            service_cidr="10.96.0.0/12",
        )
        cluster_id = f"{namespace}/c"
        settings = BootstrapSettings(nats_url=nats_url, kubeconfig=str(kube_config_path), http_port=0, step_backoff_s=0)
        logs: list[dict[str, Any]] = []
        async with running(wired(settings)):
            await Publisher(js).publish(Envelope.new(ready, cluster_id=cluster_id, now=NOW))
            for _ in range(100):
                logs += [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
                if any(entry["event"] == "Handled message" for entry in logs):
                    break
                await asyncio.sleep(0.1)
            answered = await events_of(js, cluster_id)
    finally:
        await delete_namespace(kube_api, platform)

    assert [event.type for event in answered] == ["cluster.vnodes.ready"], "no step ran, nothing failed"
    [refusal] = [entry for entry in logs if entry["event"].startswith("Refused cluster.vnodes.ready")]
    # Only the cluster's platform namespace is looked in.
    assert refusal["pod"] == f"{platform}/bystander" and refusal["level"] == "error"
    assert refusal["reason"] == expected, json.dumps(refusal, default=str)

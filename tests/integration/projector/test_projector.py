"""The projector in-process against a real apiserver and a real NATS: events redelivered and
reordered still give the Vk8s object the right status and history."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from kubernetes.aio import client
from nats.js import JetStreamContext
from pydantic import SecretStr

from libs.events import Envelope
from libs.kube import GROUP, KIND, PLURAL, VERSION
from libs.runtime import Service
from services.projector.__main__ import wired
from services.projector.logic import render_status
from services.projector.settings import ProjectorSettings
from tests.support.events import spec_document
from tests.support.services import local_settings, running
from tests.support.wait import eventually
from tests.unit.projector.sequence import Timeline
from tests.unit.projector.test_logic import fold

TOKEN = "projector-read-token"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def projector(nats_url: str, kube_config_path: Path, js: JetStreamContext) -> AsyncIterator[Service]:
    settings = local_settings(
        ProjectorSettings,
        nats_url,
        kube_config_path,
        backoff_base_s=0.1,
        backoff_max_s=0.5,
        read_api_token=SecretStr(TOKEN),
    )
    async with running(wired(settings, configure_logs=False)) as service:
        yield service
    await js.delete_key_value(settings.kv_bucket)


async def create_vk8s(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": spec_document(gpus=1, workers=1),
    }
    return cast(dict[str, Any], await client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))


async def publish(js: JetStreamContext, events: Sequence[tuple[Envelope[Any], str]]) -> None:
    for envelope, msg_id in events:
        ack = await js.publish(envelope.type, envelope.to_json(), headers={"Nats-Msg-Id": msg_id})
        assert not ack.duplicate  # every copy reaches the projector: the broker dedupe is not what is tested


async def acked(service: Service) -> float:
    """Messages the projector handled and acked, over all subjects."""
    samples = [
        sample
        for metric in service.metrics_registry.collect()
        if metric.name == "vk8s_projector_messages"
        for sample in metric.samples
        if sample.name == "vk8s_projector_messages_total" and sample.labels["outcome"] == "ack"
    ]
    return sum(sample.value for sample in samples)


async def status_of(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    current = cast(dict[str, Any], await client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    return current.get("status", {})


async def test_status_is_right_after_redelivery_and_reordering(
    projector: Service, kube_api: client.ApiClient, namespace: str, js: JetStreamContext
) -> None:
    vk8s = await create_vk8s(kube_api, namespace, "team-a")
    t = Timeline(namespace, "team-a", uid=vk8s["metadata"]["uid"])
    events = [
        t.accepted(),
        t.unschedulable(),
        t.scheduled(),
        t.ips_allocated(),
        t.vnodes_ready(),
        t.setup("master", "kubeadm-init", "Running"),
        t.setup("master", "kubeadm-init", "Success"),
        t.setup("worker-0", "kubeadm-join", "Failed", message="token expired"),
        t.setup("worker-0", "kubeadm-join", "Success", message="joined on retry"),
        t.kubernetes_ready(),
        t.kubeflow_progress(10),
        t.kubeflow_progress(30),
        t.ready(),
    ]
    rng = random.Random(42)
    # Each event once under its own id, and some again under another Nats-Msg-Id (a redelivery
    # the broker cannot tell apart), in an order that is not the order they happened in.
    copies = [(e, e.id) for e in events] + [(e, f"{e.id}/again") for e in rng.sample(events, 5)]
    rng.shuffle(copies)
    await publish(js, copies)

    expected = render_status(fold(events))
    status = await eventually(lambda: status_of(kube_api, namespace, "team-a"), "team-a's status", done=lambda s: s == expected)
    # Every copy reached the projector, and the status is still the one of each event once.
    await eventually(lambda: acked(projector), "every copy acked", done=lambda count: count == len(copies))
    assert await status_of(kube_api, namespace, "team-a") == expected

    assert (status["phase"], status["message"]) == ("Running", "Running")
    history = [(c["phase"], c["message"]) for c in status["conditions"]]
    assert history == [
        ("Waiting", "creating node"),
        ("Pending", "unschedulable: no host node fits (worker-0: needs 1 GPU, 0 free)"),
        ("Waiting", "creating node"),
        ("Installing", "configuring master node"),
        ("Installing", "installing kubeflow"),
        ("Running", "Running"),
    ]
    times = [c["lastProbeTime"] for c in status["conditions"]]
    assert times == sorted(times) and len(set(times)) == len(times)
    readiness = {c["type"]: c for c in status["readiness"]}
    assert list(readiness) == ["Scheduled", "IPsAllocated", "VNodesReady", "KubernetesReady", "KubeflowReady", "Ready"]
    assert all(c["status"] == "True" and c["observedGeneration"] == 1 for c in readiness.values())
    assert readiness["Ready"]["reason"] == "Running"
    assert status["vnodeKubernetesSetupStatuses"] == {
        "master": {"status": "Running", "isKubernetesSetup": "Success", "message": "kubeadm-init success"},
        "worker-0": {
            "status": "Running",
            "isKubernetesSetup": "Success",
            "message": "kubeadm-join success: joined on retry",
        },
    }

    # The read API serves the same status.
    async with aiohttp.ClientSession(headers=AUTHORIZED) as http:
        url = f"http://127.0.0.1:{projector.http.port}/v1/clusters/{namespace}/team-a"
        async with http.get(url) as response:
            assert (await response.json())["status"] == expected
        async with http.get(url, headers={"Authorization": "Bearer not-the-token"}) as response:
            assert response.status == 401, "the read API requires its token"
        async with http.get(f"http://127.0.0.1:{projector.http.port}/metrics") as response:
            metrics = await response.text()
    assert "vk8s_projector_time_to_running_seconds_count 1.0" in metrics


async def test_a_late_failure_of_an_old_generation_does_not_fail_the_new_one(
    projector: Service, kube_api: client.ApiClient, namespace: str, js: JetStreamContext
) -> None:
    vk8s = await create_vk8s(kube_api, namespace, "team-b")
    t = Timeline(namespace, "team-b", uid=vk8s["metadata"]["uid"])
    events = [t.accepted(), t.scheduled(), t.updated(2)]
    events += [t.failed("ipmanager", "pool exhausted", generation=1), t.scheduled(2)]  # the failure is stale
    await publish(js, [(e, e.id) for e in reversed(events)])
    expected = render_status(fold(events))
    status = await eventually(lambda: status_of(kube_api, namespace, "team-b"), "team-b's status", done=lambda s: s == expected)
    assert (status["phase"], status["message"], status["observedGeneration"]) == ("Waiting", "creating node", 2)


async def test_events_of_a_cluster_without_an_object_stay_in_the_read_model(
    projector: Service, namespace: str, js: JetStreamContext
) -> None:
    t = Timeline(namespace, "ghost")
    events = [t.requested(), t.rejected("spec.nodes: at least one node is needed")]
    await publish(js, [(e, e.id) for e in events])

    async def read() -> dict[str, Any]:
        async with aiohttp.ClientSession(headers=AUTHORIZED) as http:
            url = f"http://127.0.0.1:{projector.http.port}/v1/clusters/{namespace}/ghost"
            async with http.get(url) as response:
                return await response.json() if response.status == 200 else {}

    body = await eventually(read, "phase Failed in the read API", done=lambda b: b.get("status", {}).get("phase") == "Failed")
    assert body["status"]["message"] == "request rejected: spec.nodes: at least one node is needed"

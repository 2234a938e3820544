"""The event contract as an outside publisher meets it: nats-py alone (not the project's publisher),
the example of docs/events.md and each bad request documented beside it, against the running
stack. Each bad request gets exactly one cluster.rejected, naming the field, with causationId = the
request's id and correlationId = the request's correlationId; the example is accepted."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import nats
import pytest
from kubernetes.aio import client
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from libs.events import STREAM_NAME
from tests.e2e.conftest import ROOT
from tests.support.nats import connect_as_service
from vk8s.local import stack

EVENTS_DOC = ROOT / "docs" / "events.md"
Document = dict[str, Any]


def documented_example() -> Document:
    match = re.search(r"```json\n(.*?)```", EVENTS_DOC.read_text(), re.S)
    assert match, "docs/events.md has no JSON example"
    return json.loads(match.group(1))


def _password(document: Document) -> None:
    kubeflow = document["data"]["spec"]["kubeflow"]
    del kubeflow["passwordSecretRef"]
    kubeflow["password"] = "plain"


# (case, change to the documented example, how the one rejection's problem starts; docs/events.md lists each)
BAD_REQUESTS: list[tuple[str, Callable[[Document], None], str]] = [
    ("plain-password", _password, "data.spec: kubeflow.password is set"),
    ("other-cluster-id", lambda d: d.update(clusterId=f"{d['data']['namespace']}/other"), "clusterId: must be"),
    ("time-without-offset", lambda d: d.update(time="2026-11-28T12:00:00"), "time:"),
    ("wrong-type", lambda d: d.update(type="cluster.accepted"), "type: must be 'cluster.requested'"),
    ("schema-version", lambda d: d.update(schemaVersion=2), "schemaVersion: must be 1"),
    ("unknown-field", lambda d: d["data"]["spec"].update(color="red"), "data.spec.color:"),
    ("bad-name", lambda d: d["data"].update(name="GPU_Lab"), "data.name:"),
    (
        "gpu-fraction",
        lambda d: d["data"]["spec"]["nodes"][1]["resources"]["limits"].update({"nvidia.com/gpu": "1.5"}),
        'data.spec.nodes[1].resources.limits["nvidia.com/gpu"]:',
    ),
    (
        "incompatible-kubeflow",
        lambda d: d["data"]["spec"]["kubeflow"].update(version="v1.4.0"),
        "data.spec.kubeflow.version:",
    ),
    ("missing-namespace", lambda d: _move(d, f"absent-{uuid.uuid4().hex[:8]}"), "data.namespace: namespace"),
    (
        "missing-secret",
        lambda d: d["data"]["spec"]["kubeflow"]["passwordSecretRef"].update(name="not-there"),
        "data.spec.kubeflow.passwordSecretRef.name: Secret",
    ),
]


def _move(document: Document, namespace: str) -> None:
    document["data"]["namespace"] = namespace
    document["clusterId"] = f"{namespace}/{document['data']['name']}"


def request_in(namespace: str, case: str) -> Document:
    document = copy.deepcopy(documented_example())
    _move(document, namespace)
    document["id"] = f"plain-{case}-{uuid.uuid4()}"
    document["correlationId"] = f"portal-{case}"
    return document


async def publish(nc: NATS, document: Document) -> None:
    """As docs/events.md shows it: a request to the gateway on vk8s.requests.<namespace>."""
    subject = f"vk8s.requests.{document['data']['namespace']}"
    answer = json.loads((await nc.request(subject, json.dumps(document).encode(), timeout=15)).data)
    assert answer == {"stored": True, "duplicate": False, "id": document["id"]}, answer


async def watch(nc: NATS, record: Callable[[Msg], Any]) -> Any:
    """The events of the requester's namespaces, as docs/events.md says: the projector's feed (core NATS;
    a requester may not read the stream). An event may be relayed twice: each id is recorded once."""
    seen: set[str] = set()

    async def once(msg: Msg) -> None:
        event_id = json.loads(msg.data).get("id")
        if event_id not in seen:
            seen.add(event_id)
            await record(msg)

    sub = await nc.subscribe("vk8s.feed.*.>", cb=once)  # (this stack's requester may ask in every namespace)
    await nc.flush()
    return sub


async def settled(info: stack.StackInfo, durables: tuple[str, ...] = ("gateway", "projector")) -> None:
    """Every service that reads requests has settled every message it was given (asked as each service:
    only it may read its consumer)."""
    for durable in durables:
        nc = await connect_as_service(info, durable)
        try:
            for _ in range(600):
                consumer = await nc.jetstream().consumer_info(STREAM_NAME, durable)
                if consumer.num_pending == 0 and consumer.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{durable} did not settle: {consumer}")
        finally:
            await nc.drain()


@pytest.fixture
async def plain_client(product: tuple[stack.StackLayout, stack.StackInfo]) -> Any:
    """As docs/events.md tells a requester to connect: its user, and replies on its own inbox."""
    info = product[1]
    nc = await nats.connect(
        info.nats_url, user=info.nats_user, password=info.nats_password, inbox_prefix=f"vk8s.inbox.{info.nats_user}"
    )
    yield nc
    await nc.drain()


@pytest.fixture
async def secret_of_the_example(api: client.ApiClient, namespace: str) -> None:
    reference = documented_example()["data"]["spec"]["kubeflow"]["passwordSecretRef"]
    body = client.V1Secret.model_validate({"metadata": {"name": reference["name"]}, "stringData": {reference["key"]: "p"}})
    await client.CoreV1Api(api).create_namespaced_secret(namespace, body)


def test_every_bad_request_checked_here_is_documented() -> None:
    text = EVENTS_DOC.read_text()
    assert [start for _, _, start in BAD_REQUESTS if f"`{start}`" not in text] == []


@pytest.mark.parametrize(("case", "change", "expected"), BAD_REQUESTS, ids=[case for case, _, _ in BAD_REQUESTS])
async def test_a_documented_bad_request_gets_one_rejection_naming_the_field(
    plain_client: NATS,
    product: tuple[stack.StackLayout, stack.StackInfo],
    namespace: str,
    secret_of_the_example: None,
    case: str,
    change: Callable[[Document], None],
    expected: str,
) -> None:
    document = request_in(namespace, case)
    change(document)
    answers: list[Document] = []

    async def record(msg: Msg) -> None:
        event = json.loads(msg.data)
        if event.get("causationId") == document["id"] or event.get("data", {}).get("requestId") == document["id"]:
            answers.append(event)

    sub = await watch(plain_client, record)
    try:
        await publish(plain_client, document)
        for _ in range(300):
            if answers:
                break
            await asyncio.sleep(0.1)
        await settled(product[1])
        await plain_client.flush()
    finally:
        await sub.unsubscribe()
    assert [answer["type"] for answer in answers] == ["cluster.rejected"], answers
    [rejected] = answers
    assert (rejected["causationId"], rejected["correlationId"]) == (document["id"], document["correlationId"])
    assert rejected["data"]["requestId"] == document["id"]
    assert rejected["data"]["problems"][0].startswith(expected), rejected["data"]["problems"]


async def test_the_documented_example_is_accepted(
    plain_client: NATS, namespace: str, secret_of_the_example: None
) -> None:
    document = request_in(namespace, "example")
    accepted: asyncio.Future[Document] = asyncio.get_running_loop().create_future()

    async def record(msg: Msg) -> None:
        event = json.loads(msg.data)
        if event.get("causationId") == document["id"] and not accepted.done():
            accepted.set_result(event)

    sub = await watch(plain_client, record)
    try:
        await publish(plain_client, document)
        answer = await asyncio.wait_for(accepted, timeout=60)
    finally:
        await sub.unsubscribe()
    assert answer["type"] == "cluster.accepted", answer
    assert (answer["clusterId"], answer["correlationId"]) == (document["clusterId"], document["correlationId"])

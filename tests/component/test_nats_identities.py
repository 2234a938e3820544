"""One NATS user per service, with permissions generated from the event catalog, on a real
nats-server of the test's own: a service publishes what it emits and nothing else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError

from libs.events import REGISTRY, STREAM_NAME, STREAM_OWNER, Envelope, StreamSettings, ensure_consumer, ensure_kv, ensure_stream
from libs.events.broker import ConsumerSettings
from libs.events.catalog import EVENTS, feed_event_type, feed_subject, requester_inbox, service_inbox
from libs.events.permissions import REQUESTER, nats_authorization
from libs.runtime import ServiceSettings
from libs.runtime.service import connect_nats, nats_password
from services.projector.adapters.feed import EventFeed
from services.topology import BY_NAME, SERVICES
from tests.support.events import NOW, cluster_requested
from tests.support.identities import Connect, answering_gateway, ask, refused_subjects, stored, users_with_stream
from tests.support.wait import eventually
from vk8s.local.nats_server import LocalNatsServer

SERVICE_PASSWORDS = {topology.service: f"{topology.service}-password" for topology in SERVICES}
USERS = {**SERVICE_PASSWORDS, REQUESTER: "requester-password"}
SCOPE = ("team-a",)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    authorization = nats_authorization([(t, SERVICE_PASSWORDS[t.service]) for t in SERVICES], {REQUESTER: (USERS[REQUESTER], SCOPE)})
    with LocalNatsServer(tmp_path_factory.mktemp("nats"), authorization=authorization) as running:
        yield running


@pytest.fixture
async def connect(server: LocalNatsServer) -> AsyncIterator[Connect]:
    async with users_with_stream(server.url, USERS) as as_user:
        yield as_user


@pytest.mark.parametrize("service", sorted(BY_NAME))
async def test_a_service_publishes_what_it_emits_and_nothing_else(connect: Connect, service: str) -> None:
    client, errors = await connect(service)
    emits = set(BY_NAME[service].emits)
    for subject in sorted(emits):
        assert await stored(client, subject), subject
    for subject in sorted({event.subject for event in EVENTS} - emits):
        await client.publish(subject, b"{}")
    await client.flush()
    await asyncio.sleep(0.2)
    refused = set(refused_subjects(errors))
    assert refused == {event.subject for event in EVENTS} - emits


async def requests_in_stream(client: NATS) -> list[str]:
    found: list[str] = []
    sub = await client.jetstream().subscribe("cluster.requested", ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except NatsTimeoutError:
                return found
            found.append(json.loads(msg.data)["id"])
    finally:
        await sub.unsubscribe()


async def test_a_scoped_requester_asks_in_its_namespaces_only_and_publishes_no_event(connect: Connect) -> None:
    async with answering_gateway(connect) as gateway:
        requester, errors = await connect(REQUESTER)

        reply = await requester.request("vk8s.requests.team-a", ask("team-a", event_id="ask-1"), timeout=5)
        assert json.loads(reply.data) == {"stored": True, "duplicate": False, "id": "ask-1"}
        # The payload's word is not the scope: the subject's namespace is.
        reply = await requester.request(
            "vk8s.requests.team-a", ask("team-a", payload_namespace="team-b", event_id="ask-2"), timeout=5
        )
        assert json.loads(reply.data)["error"].startswith(
            "data.namespace: 'team-b' is not the namespace this request was sent for ('team-a')"
        )
        with pytest.raises(NatsTimeoutError):
            await requester.request("vk8s.requests.team-b", ask("team-b", event_id="ask-3"), timeout=1)
        assert not await stored(requester, "cluster.requested")
        assert not await stored(requester, "cluster.delete.requested")
        await asyncio.sleep(0.2)
        assert [str(error) for error in errors] == [
            'nats: permissions violation for publish to "vk8s.requests.team-b"',
            'nats: permissions violation for publish to "cluster.requested"',
            'nats: permissions violation for publish to "cluster.delete.requested"',
        ]
        # (other tests of this server's stream published requests of their own)
        assert [event_id for event_id in await requests_in_stream(gateway) if event_id.startswith("ask-")] == ["ask-1"]


@pytest.mark.parametrize("service", sorted(t.service for t in SERVICES if t.kv_bucket))
async def test_a_service_keeps_its_consumer_and_bucket_and_touches_no_others(connect: Connect, service: str) -> None:
    """Its own durable and bucket work; another service's durable it may not pull from, change or
    delete, and another's bucket it may neither read, write, watch nor change."""
    client, errors = await connect(service)
    js = client.jetstream(timeout=1)
    await ensure_consumer(js, STREAM_NAME, ConsumerSettings(durable=service, filter_subjects=BY_NAME[service].consumes))
    own = await ensure_kv(js, BY_NAME[service].kv_bucket or "")
    await own.put("key", b"value")
    assert (await own.get("key")).value == b"value"
    other = next(t for t in SERVICES if t.service != service and t.kv_bucket)
    bucket = other.kv_bucket or ""
    owner, _ = await connect(other.service)
    await ensure_consumer(owner.jetstream(), STREAM_NAME, ConsumerSettings(durable=other.service, filter_subjects=other.consumes))
    await (await ensure_kv(owner.jetstream(), bucket)).put("key", b"value")

    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.key", direct=True),
        lambda: js.key_value(bucket),
        lambda: js.publish(f"$KV.{bucket}.key", b"forged"),
        lambda: js.delete_consumer(STREAM_NAME, other.service),
        lambda: ensure_consumer(js, STREAM_NAME, ConsumerSettings(durable=other.service, filter_subjects=("cluster.deleted",))),
    ]
    for attempt in attempts:
        with pytest.raises(NatsTimeoutError):
            await attempt()
    with pytest.raises(NatsTimeoutError):
        await (await js.pull_subscribe_bind(other.service, STREAM_NAME)).fetch(1, timeout=1)
    # What the other service pulls comes on its inbox: neither that nor every inbox may be listened to.
    for inbox in ("_INBOX.>", f"{service_inbox(other.service)}.>"):
        await client.subscribe(inbox)
    await client.flush()
    await asyncio.sleep(0.2)

    info = await owner.jetstream().consumer_info(STREAM_NAME, other.service)
    assert list(info.config.filter_subjects or ()) == list(other.consumes)
    stream = STREAM_NAME.lower()
    # (the server lower-cases the subject in its message)
    assert sorted(refused_subjects(errors)) == sorted({
        f"$js.api.direct.get.kv_{bucket}.$kv.{bucket}.key",
        f"$js.api.stream.info.kv_{bucket}",
        f"$kv.{bucket}.key",
        f"$js.api.consumer.delete.{stream}.{other.service}",
        f"$js.api.consumer.create.{stream}.{other.service}",
        f"$js.api.consumer.msg.next.{stream}.{other.service}",
        "_inbox.>",
        f"{service_inbox(other.service).lower()}.>",
    }), errors


@pytest.mark.parametrize("user", sorted(t.service for t in SERVICES))
async def test_no_service_deletes_or_purges_the_stream(connect: Connect, user: str) -> None:
    client, errors = await connect(user)
    js = client.jetstream(timeout=1)
    before = (await js.stream_info(STREAM_NAME)).state.messages

    for attempt in (js.delete_stream(STREAM_NAME), js.purge_stream(STREAM_NAME), js.delete_msg(STREAM_NAME, 1)):
        with pytest.raises(NatsTimeoutError):
            await attempt
    await asyncio.sleep(0.2)

    assert (await js.stream_info(STREAM_NAME)).state.messages == before
    assert sorted(str(error) for error in errors) == [
        f'nats: permissions violation for publish to "$js.api.stream.{verb}.{STREAM_NAME.lower()}"'
        for verb in ("delete", "msg.delete", "purge")
    ]


async def test_a_requester_follows_its_namespaces_feed_and_reads_nothing_else(connect: Connect) -> None:
    """It gets the projector's relay of its namespaces' events, and no JetStream: neither the stream (every
    tenant's events), nor a service's consumer or bucket, nor anyone else's replies (`_INBOX.>`)."""
    gateway, _ = await connect("gateway")
    durable = ConsumerSettings(durable="gateway", filter_subjects=BY_NAME["gateway"].consumes)
    await ensure_consumer(gateway.jetstream(), STREAM_NAME, durable)
    bucket_name = BY_NAME["gateway"].kv_bucket or ""
    await (await ensure_kv(gateway.jetstream(), bucket_name)).put("key", b"value")
    projector, _ = await connect("projector")
    client, errors = await connect(REQUESTER)
    own, theirs = (
        Envelope.new(cluster_requested(name).model_copy(update={"namespace": namespace}), cluster_id=f"{namespace}/{name}", now=NOW)
        for namespace, name in (("team-a", "mine"), ("team-b", "theirs"))
    )

    followed = await client.subscribe(feed_subject(own.cluster_id))
    for subject in (feed_subject(theirs.cluster_id), "_INBOX.>", f"{requester_inbox('someone-else')}.>"):
        await client.subscribe(subject)
    await client.flush()
    for event in (own, theirs):
        await EventFeed(projector).relay(event)
    msg = await followed.next_msg(timeout=30)
    assert REGISTRY.decode(feed_event_type(msg.subject), msg.data) == own

    js = client.jetstream(timeout=1)

    async def pull_from_the_gateways_consumer() -> object:
        return await (await js.pull_subscribe_bind("gateway", STREAM_NAME)).fetch(1, timeout=1)

    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: js.subscribe("cluster.>", ordered_consumer=True),
        lambda: js.stream_info(STREAM_NAME),
        pull_from_the_gateways_consumer,
        lambda: js.delete_consumer(STREAM_NAME, "gateway"),
        lambda: js.get_last_msg(f"KV_{bucket_name}", f"$KV.{bucket_name}.key", direct=True),
    ]
    for attempt in attempts:
        with pytest.raises(NatsTimeoutError):
            await attempt()

    assert (await gateway.jetstream().consumer_info(STREAM_NAME, "gateway")).name == "gateway"

    def denied() -> set[tuple[str, str]]:
        """(kind, subject) of each violation the server reported (it lower-cases the subject)."""
        return {(str(error).split(" to ")[0].rsplit(" ", 1)[1], str(error).split('"')[1]) for error in errors}

    expected = {
        ("subscription", "_inbox.>"),
        ("subscription", f"{requester_inbox('someone-else')}.>"),
        ("subscription", feed_subject(theirs.cluster_id)),
        ("publish", "$js.api.stream.names"),  # (looking up the stream of cluster.>)
        ("publish", f"$js.api.stream.info.{STREAM_NAME.lower()}"),
        ("publish", f"$js.api.consumer.msg.next.{STREAM_NAME.lower()}.gateway"),
        ("publish", f"$js.api.consumer.delete.{STREAM_NAME.lower()}.gateway"),
        ("publish", f"$js.api.direct.get.kv_{bucket_name}.$kv.{bucket_name}.key"),
    }
    # (each report travels on its own; a loaded machine may deliver the last after the attempt's timeout)
    await eventually(denied, "every violation reported", timeout=10, done=lambda found: found >= expected)
    assert denied() == expected, errors


async def test_a_service_connects_with_its_password_read_from_a_file(server: LocalNatsServer, tmp_path: Path) -> None:
    """What the chart mounts: the password as a Secret's file (with the trailing newline a file may
    have), so it is in no environment variable."""
    secret = tmp_path / "password"
    secret.write_text(f"{SERVICE_PASSWORDS['vnode']}\n")
    settings = ServiceSettings(nats_url=server.url, nats_user="vnode", nats_password_file=str(secret))

    assert nats_password(settings) == SERVICE_PASSWORDS["vnode"]
    # The server takes it (a wrong one would keep the service retrying: bounded here).
    client = await asyncio.wait_for(connect_nats(settings, name="vnode"), timeout=20)
    try:
        assert client.is_connected
    finally:
        await client.close()

    missing = settings.model_copy(update={"nats_password_file": str(tmp_path / "absent")})
    with pytest.raises(RuntimeError, match=r"^nats_password_file: cannot read .*absent"):
        await connect_nats(missing, name="vnode")
    with pytest.raises(ValueError, match="nats_password and nats_password_file: give one"):
        ServiceSettings(nats_password="x", nats_password_file=str(secret))


@pytest.mark.parametrize("service", sorted(t.service for t in SERVICES if t.service != STREAM_OWNER))
async def test_only_the_owner_creates_or_changes_the_event_stream(connect: Connect, service: str) -> None:
    """Every other service is refused changing it (it only waits for it: libs.runtime.Service)."""
    client, errors = await connect(service)
    js = client.jetstream(timeout=1)
    before = (await js.stream_info(STREAM_NAME)).config.duplicate_window

    with pytest.raises(NatsTimeoutError):
        await ensure_stream(js, StreamSettings(duplicate_window_s=7))
    await asyncio.sleep(0.2)

    assert refused_subjects(errors) == [f"$js.api.stream.update.{STREAM_NAME.lower()}"]
    assert (await js.stream_info(STREAM_NAME)).config.duplicate_window == before
    # Its own KV bucket, a stream too, it still makes.
    if BY_NAME[service].kv_bucket:
        await ensure_kv(js, BY_NAME[service].kv_bucket or "")
    owner, owner_errors = await connect(STREAM_OWNER)
    changed = await ensure_stream(owner.jetstream(timeout=1), StreamSettings(duplicate_window_s=7))
    assert changed.config.duplicate_window == 7
    await ensure_stream(owner.jetstream(timeout=1), StreamSettings())
    assert not owner_errors

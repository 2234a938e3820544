"""The NATS users the Helm chart renders (templates/nats-users.yaml), on a real nats-server that includes
the rendered file as an operator's NATS deployment would, with the passwords in its environment: each
service publishes what it emits and nothing of another's, a requester asks in its namespaces only."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from libs.events.catalog import EVENTS
from services.topology import BY_NAME, NAMES
from tests.support.identities import Connect, answering_gateway, ask, refused_subjects, stored, users_with_stream
from tests.unit.deploy.helm import of_kind, render
from vk8s.local.nats_server import LocalNatsServer

REQUESTER = "ci"
# A password nats-server reads as a string from a variable: it starts with a letter (docs/deploy.md).
PASSWORDS = {user: f"p{secrets.token_hex(16)}" for user in (*NAMES, REQUESTER)}


def password_variable(user: str) -> str:
    return f"VK8S_NATS_{user.upper().replace('-', '_')}_PASSWORD"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    manifests = render({"nats": {"requesters": [{"user": REQUESTER, "namespaces": ["team-a"]}]}})
    (users,) = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"] == "vk8s-nats-users"]
    store = tmp_path_factory.mktemp("nats")
    (store / "users.conf").write_text(users["data"]["users.conf"])
    environment = {password_variable(user): password for user, password in PASSWORDS.items()}
    config = 'authorization {\n  include "users.conf"\n}\n'
    with LocalNatsServer(store, authorization=config, environment=environment) as running:
        yield running


@pytest.fixture
async def connect(server: LocalNatsServer) -> AsyncIterator[Connect]:
    async with users_with_stream(server.url, PASSWORDS) as as_user:
        yield as_user


@pytest.mark.parametrize("service", ["gateway", "vnode", "bootstrap"])
async def test_a_service_of_the_chart_publishes_what_it_emits_and_not_another_services_events(
    connect: Connect, service: str
) -> None:
    client, errors = await connect(service)
    emits = set(BY_NAME[service].emits)
    for subject in sorted(emits):
        assert await stored(client, subject), subject
    others = {event.subject for event in EVENTS} - emits
    for subject in sorted(others):
        assert not await stored(client, subject), subject
    await asyncio.sleep(0.2)
    assert set(refused_subjects(errors)) == others


async def test_a_chart_requester_asks_in_its_namespaces_only(connect: Connect) -> None:
    async with answering_gateway(connect):
        requester, errors = await connect(REQUESTER)
        reply = await requester.request("vk8s.requests.team-a", ask("team-a", event_id="chart-ask-1"), timeout=5)
        assert json.loads(reply.data) == {"stored": True, "duplicate": False, "id": "chart-ask-1"}
        with pytest.raises(NatsTimeoutError):
            await requester.request("vk8s.requests.team-b", ask("team-b", event_id="chart-ask-2"), timeout=1)
        assert not await stored(requester, "cluster.requested")
        await asyncio.sleep(0.2)
        assert refused_subjects(errors) == ["vk8s.requests.team-b", "cluster.requested"]


async def first_answer(url: str, user: str, password: str) -> bytes:
    """The server's answer to a client's CONNECT (then PING) as `user`: PONG, or the error refusing it.
    (Over a socket of its own: nats-py leaves its socket open when a connect is refused.)"""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # the server's INFO
        connect = {"user": user, "pass": password, "verbose": False, "pedantic": False}
        writer.write(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
        return (await asyncio.wait_for(reader.readline(), timeout=5)).strip()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_service_cannot_connect_with_another_services_password(server: LocalNatsServer) -> None:
    assert await first_answer(server.url, "vnode", PASSWORDS["vnode"]) == b"PONG"
    assert await first_answer(server.url, "vnode", PASSWORDS["gateway"]) == b"-ERR 'Authorization Violation'"

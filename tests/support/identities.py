"""Connecting to a real nats-server as one of its users, and what such a user may do: the helpers of the
NATS identity tests (tests/component/test_nats_identities.py, test_chart_nats_users.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import nats
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError

from libs.events import Envelope, StreamSettings, ensure_stream
from libs.events.catalog import requester_inbox, service_inbox
from services.gateway.adapters.requests import RequestIntake
from services.topology import NAMES
from tests.support.events import NOW, cluster_requested

# Connects as a user: the client and the errors the server sent it (its permission violations).
Connect = Callable[[str], Awaitable[tuple[NATS, list[Exception]]]]


@contextlib.asynccontextmanager
async def users_of(url: str, passwords: Mapping[str, str]) -> AsyncIterator[Connect]:
    """Connects as any user of `passwords` (user -> password: a service's, or else a requester's);
    closes every client at the end."""
    clients: list[NATS] = []

    async def as_user(user: str) -> tuple[NATS, list[Exception]]:
        errors: list[Exception] = []

        async def collect(error: Exception) -> None:
            errors.append(error)

        # Each gets its replies on its own inbox, as connect_nats and the CLI (vk8s.client.connected) ask for.
        inbox = service_inbox(user) if user in NAMES else requester_inbox(user)
        client = await nats.connect(url, user=user, password=passwords[user], error_cb=collect, inbox_prefix=inbox)
        clients.append(client)
        return client, errors

    try:
        yield as_user
    finally:
        for client in clients:
            await client.close()


@contextlib.asynccontextmanager
async def users_with_stream(url: str, passwords: Mapping[str, str]) -> AsyncIterator[Connect]:
    """`users_of`, once the gateway made the event stream (the services' permissions let it)."""
    async with users_of(url, passwords) as as_user:
        gateway, _ = await as_user("gateway")
        await ensure_stream(gateway.jetstream(), StreamSettings())
        yield as_user


@contextlib.asynccontextmanager
async def answering_gateway(connect: Connect) -> AsyncIterator[NATS]:
    """The gateway's request intake, connected as user gateway, answering until the end; yields its client."""
    gateway, _ = await connect("gateway")
    intake = asyncio.create_task(RequestIntake(gateway).run())
    try:
        await asyncio.sleep(0.2)  # subscribed
        yield gateway
    finally:
        intake.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await intake


async def stored(client: NATS, subject: str) -> bool:
    """Publishes one event of `subject` with JetStream; True when the stream acknowledged it."""
    payload = Envelope.new(cluster_requested(), cluster_id="default/team-a", now=NOW).to_json()
    try:
        await client.jetstream().publish(subject, payload, timeout=0.5)
    except NatsTimeoutError:
        return False  # the server dropped it: no stream ever saw it
    return True


def ask(namespace: str, *, payload_namespace: str | None = None, event_id: str = "ask-1") -> bytes:
    """A request for a cluster in `namespace` (the payload may claim another), as a requester sends it."""
    request = cluster_requested().model_copy(update={"namespace": payload_namespace or namespace})
    return Envelope.new(request, cluster_id=f"{request.namespace}/team-a", now=NOW, event_id=event_id).to_json()


def refused_subjects(errors: list[Exception]) -> list[str]:
    """The subjects of the server's permission violations (it lower-cases JetStream API subjects)."""
    return [str(error).split('"')[1] for error in errors]

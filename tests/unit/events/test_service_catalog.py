"""The catalog of what each service consumes and emits (the source of its NATS permissions) is
the table of docs/events.md, and the permissions follow it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from libs.events.catalog import EVENTS, SERVICES
from libs.events.permissions import REQUESTER, nats_authorization, service_permissions

EVENTS_DOC = Path(__file__).resolve().parents[3] / "docs/events.md"


def documented_consumers() -> dict[str, set[str]]:
    """subject -> the services its row in docs/events.md names as consumers."""
    rows = re.findall(r"^\| `(cluster\.[a-z.]+)` \| [^|]* \| ([^|]*) \|", EVENTS_DOC.read_text(), re.MULTILINE)
    return {subject: {name.strip() for name in consumers.split(",")} for subject, consumers in rows}


def test_consumers_are_those_of_the_documented_table() -> None:
    documented = documented_consumers()
    assert set(documented) == {event.subject for event in EVENTS}
    for subject, consumers in documented.items():
        cataloged = {service for service, events in SERVICES.items() if subject in events.consumes}
        assert cataloged == consumers, subject


def test_every_event_has_an_emitter_and_every_consumer_may_report_failure() -> None:
    emitted = {subject for events in SERVICES.values() for subject in events.emits}
    assert emitted == {event.subject for event in EVENTS}
    for service, events in SERVICES.items():
        assert "cluster.failed" in events.emits, service
        assert ("cluster.rejected" in events.emits) is (service == "gateway"), service


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_may_publish_no_event_it_does_not_emit(service: str) -> None:
    allowed = service_permissions(service)["publish"]["allow"]
    assert [subject for subject in allowed if subject.startswith("cluster.")] == list(SERVICES[service].emits)
    assert not any(subject.startswith(("cluster.>", "cluster.*", ">")) for subject in allowed)
    own_bucket = SERVICES[service].kv_bucket
    assert [subject for subject in allowed if subject.startswith("$KV.")] == ([f"$KV.{own_bucket}.>"] if own_bucket else [])


def test_a_requester_publishes_no_event_and_asks_in_its_namespaces_only() -> None:
    block = nats_authorization({"gateway": "g"}, {REQUESTER: ("r", ("team-a", "team-b"))})["authorization"]["users"]
    assert [(user["user"], user["password"]) for user in block] == [("gateway", "g"), (REQUESTER, "r")]
    requester = block[1]["permissions"]["publish"]["allow"]
    assert not [subject for subject in requester if subject.startswith(("cluster.", "$KV.", ">"))]
    assert [subject for subject in requester if subject.startswith("vk8s.")] == [
        "vk8s.requests.team-a", "vk8s.requests.team-b",
    ]  # fmt: skip
    gateway = block[0]["permissions"]
    assert "vk8s.requests.*" in gateway["subscribe"]["allow"] and "_INBOX.>" in gateway["publish"]["allow"]

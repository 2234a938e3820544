"""What each service consumes and emits is declared by its handlers (`services.topology`): the NATS
permissions, docs/events.md's tables and diagram and the projector's pipeline order follow it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from libs.events import EVENTS, STREAM_NAME, STREAM_OWNER, Publishes, declare, subscriber
from libs.events.catalog import ClusterAccepted, ClusterFailed, ClusterReady, ClusterRequested, ClusterScheduled
from libs.events.permissions import REQUESTER, nats_authorization, service_permissions
from services import topology
from services.projector.logic import PIPELINE_RANK
from services.topology import BY_NAME, SERVICES

DOCS = Path(__file__).resolve().parents[3] / "docs"
EVENTS_DOC = DOCS / "events.md"
ARCHITECTURE_DOC = DOCS / "architecture.md"


def subject_rows() -> dict[str, tuple[str, str]]:
    """subject -> (published by, consumed by) cells of its row in docs/events.md's table."""
    rows = re.findall(r"^\| `(cluster\.[a-z.]+)` \| ([^|]*) \| ([^|]*) \|", EVENTS_DOC.read_text(), re.MULTILINE)
    return {subject: (published, consumed) for subject, published, consumed in rows}


def named_services(cell: str) -> set[str]:
    return {name for name in BY_NAME if re.search(rf"\b{name}\b", cell)}


def test_the_documented_consumers_are_the_declared_ones() -> None:
    rows = subject_rows()
    assert set(rows) == {event.subject for event in EVENTS}
    for subject, (_, consumed) in rows.items():
        assert {name.strip() for name in consumed.split(",")} == set(topology.consumers(subject)), subject


def test_the_documented_publishers_are_the_declared_ones() -> None:
    for subject, (published, _) in subject_rows().items():
        if subject == ClusterFailed.subject:  # "any stage's consumer wrapper", and who else declares it
            assert "any stage" in published and {"vnode"} <= named_services(published)
        else:
            assert named_services(published) == set(topology.emitters(subject)), subject


def test_the_generated_block_of_the_events_doc_is_current() -> None:
    document = EVENTS_DOC.read_text()
    assert topology.with_rendered(document) == document, "run: python -m services.topology --write docs/events.md"


def pipeline_diagram_arrows() -> list[tuple[str, str]]:
    """(service, subject) for each `──> cluster.x` of architecture.md's pipeline diagrams that a
    service is drawn publishing: the service named last before the arrow on its line, else the one
    whose `<service>:` line it continues. Arrows of no service (a user's action) are left out."""
    section = ARCHITECTURE_DOC.read_text().split("\n## The pipeline\n", 1)[1].split("\n## ", 1)[0]
    arrows = []
    for block in re.findall(r"```\n(.*?)```", section, re.DOTALL):
        service = None
        for line in block.splitlines():
            if (starts := re.match(r"\s*([a-z]+):", line)) and starts.group(1) in BY_NAME:
                service = starts.group(1)
            elif len(line) - len(line.lstrip()) <= 1:  # a step of its own, not a service's
                service = None
            for arrow in re.finditer(r"──> (cluster\.[a-z.]+)", line):
                before = re.sub(r"cluster\.[a-z.]+", "", line[: arrow.start()])
                named = [name for name in re.findall(r"[a-z]+", before) if name in BY_NAME]
                if emitter := (named[-1] if named else service):
                    arrows.append((emitter, arrow.group(1)))
    return arrows


def test_the_architecture_diagram_draws_only_declared_emitters() -> None:
    arrows = pipeline_diagram_arrows()
    assert len(arrows) >= 10, arrows  # the diagram was read at all
    for service, subject in arrows:
        assert subject in BY_NAME[service].emits, (service, subject)


def test_every_event_has_an_emitter_and_every_consumer_may_report_failure() -> None:
    emitted = {subject for t in SERVICES for subject in t.emits}
    assert emitted == {event.subject for event in EVENTS}
    for t in SERVICES:
        assert "cluster.failed" in t.emits, t.service
        assert ("cluster.rejected" in t.emits) is (t.service == "gateway"), t.service


def test_the_projector_ranks_the_pipeline_in_the_declared_order() -> None:
    """Every declared answer within the ranked pipeline ranks after what it answers, and every
    ranked event is reached from cluster.requested through declared answers and publishers."""
    for consumed, service, emitted in topology.edges():
        if consumed in PIPELINE_RANK and emitted in PIPELINE_RANK:
            assert PIPELINE_RANK[consumed] < PIPELINE_RANK[emitted], (consumed, service, emitted)
    reached, frontier = set(), [ClusterRequested.subject]
    while frontier:
        subject = frontier.pop()
        reached.add(subject)
        for t in SERVICES:
            if subject in t.consumes:
                answers = [e for s in t.subscriptions if s.subject == subject for e in s.emits]
                answers += [e for p in t.publishers for e in p.emits]
                frontier += [e for e in answers if e not in reached]
    assert set(PIPELINE_RANK) <= reached


@pytest.mark.parametrize("service", sorted(BY_NAME))
def test_a_service_may_publish_no_event_it_does_not_emit(service: str) -> None:
    declared = BY_NAME[service]
    allowed = service_permissions(declared)["publish"]["allow"]
    assert [subject for subject in allowed if subject.startswith("cluster.")] == list(declared.emits)
    assert not any(subject.startswith(("cluster.>", "cluster.*", ">")) for subject in allowed)
    own_bucket = [f"$KV.{declared.kv_bucket}.>"] if declared.kv_bucket else []
    assert [subject for subject in allowed if subject.startswith("$KV.")] == own_bucket
    # Its replies on its own inbox only; the gateway also takes the requests.
    listens = service_permissions(declared)["subscribe"]["allow"]
    assert listens == [f"_INBOX.{service}.>", *(["vk8s.requests.*"] if service == "gateway" else [])]


@pytest.mark.parametrize("service", sorted(BY_NAME))
def test_only_the_stream_owner_may_create_or_change_the_event_stream(service: str) -> None:
    denied = service_permissions(BY_NAME[service])["publish"]["deny"]
    changes = [f"$JS.API.STREAM.CREATE.{STREAM_NAME}", f"$JS.API.STREAM.UPDATE.{STREAM_NAME}"]
    assert all((change in denied) is (service != STREAM_OWNER) for change in changes), denied


def test_a_requester_asks_and_follows_in_its_namespaces_only_with_no_jetstream() -> None:
    block = nats_authorization(
        [(BY_NAME["gateway"], "g"), (BY_NAME["projector"], "p")], {REQUESTER: ("r", ("team-a", "team-b"))}
    )
    users = block["authorization"]["users"]
    assert [(user["user"], user["password"]) for user in users] == [("gateway", "g"), ("projector", "p"), (REQUESTER, "r")]
    assert users[2]["permissions"] == {
        "publish": {"allow": ["vk8s.requests.team-a", "vk8s.requests.team-b"]},
        "subscribe": {"allow": [f"vk8s.inbox.{REQUESTER}.>", "vk8s.feed.team-a.>", "vk8s.feed.team-b.>"]},
    }
    gateway, projector = users[0]["permissions"], users[1]["permissions"]
    # The gateway answers on the requesters' inboxes; the projector alone relays the feed.
    assert "vk8s.requests.*" in gateway["subscribe"]["allow"] and "vk8s.inbox.>" in gateway["publish"]["allow"]
    assert "vk8s.feed.>" in projector["publish"]["allow"] and "vk8s.feed.>" not in gateway["publish"]["allow"]


def test_a_declaration_is_read_from_the_marked_methods_in_their_order() -> None:
    class Stage:
        @subscriber(ClusterScheduled, emits=(ClusterReady,))
        async def scheduled(self, event: object) -> list[object]:
            return []

        @subscriber(ClusterRequested, ClusterAccepted)
        async def early(self, event: object) -> list[object]:
            return []

        async def helper(self) -> None:
            """Not a subscription."""

    declared = declare("stage", Stage, publishers=(Publishes.of("a watch", ClusterAccepted),), kv_bucket="b")
    assert [(s.subject, s.handler, s.emits) for s in declared.subscriptions] == [
        ("cluster.scheduled", "scheduled", ("cluster.ready",)),
        ("cluster.requested", "early", ()),
        ("cluster.accepted", "early", ()),
    ]
    assert declared.consumes == ("cluster.scheduled", "cluster.requested", "cluster.accepted")
    # Catalog order; the wrapper's answers to what it cannot handle are included.
    assert declared.emits == ("cluster.accepted", "cluster.rejected", "cluster.ready", "cluster.failed")


def test_a_subject_consumed_twice_or_no_subscription_is_refused_by_name() -> None:
    class Twice:
        @subscriber(ClusterAccepted)
        async def one(self, event: object) -> list[object]:
            return []

        @subscriber(ClusterAccepted)
        async def other(self, event: object) -> list[object]:
            return []

    with pytest.raises(ValueError, match="consumed by two methods"):
        declare("twice", Twice)
    with pytest.raises(ValueError, match="no @subscriber methods"):
        declare("none", object)

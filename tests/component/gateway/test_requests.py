"""cluster.requested on a real nats-server: what the gateway rejects before it touches Kubernetes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from libs.events import Envelope
from libs.events.catalog import ClusterRequested
from libs.runtime import Service
from services.gateway.__main__ import wired
from services.gateway.settings import GatewaySettings
from tests.support.events import NOW, spec_document
from tests.support.streams import answering, next_event

NOWHERE_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
    "users": [{"name": "nobody", "user": {}}],
    "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}],
    "current-context": "nowhere",
}


@pytest.fixture
async def gateway_consumer(nats_url: str, js: JetStreamContext, tmp_path: Path) -> AsyncIterator[Service]:
    """The gateway as it is wired, with an apiserver address nothing listens on: a rejection must
    be decided without Kubernetes."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(NOWHERE_KUBECONFIG))
    settings = GatewaySettings(
        nats_url=nats_url, http_port=0, max_deliver=2, backoff_base_s=0.1, kubeconfig=str(kubeconfig)
    )
    async with wired(settings) as service:
        await service.start()
        yield service


async def test_malformed_request_is_rejected_naming_the_field(gateway_consumer: Service, js: JetStreamContext) -> None:
    spec = spec_document()
    spec["nodes"][0]["role"] = "boss"
    document = {
        "id": "malformed-1",
        "type": "cluster.requested",
        "schemaVersion": 1,
        "time": NOW.isoformat(),
        "clusterId": "default/team-a",
        "correlationId": "malformed-1",
        "data": {"name": "team-a", "namespace": "default", "spec": spec},
    }
    await js.publish("cluster.requested", json.dumps(document).encode(), headers={"Nats-Msg-Id": "malformed-1"})
    rejected = await next_event(js, "cluster.rejected", answering("malformed-1"))
    assert rejected.cluster_id == "default/team-a"
    assert any(problem.startswith("data.spec.nodes[0].role:") for problem in rejected.data.problems)


async def test_invalid_request_is_rejected_naming_the_field(gateway_consumer: Service, js: JetStreamContext) -> None:
    spec = spec_document()
    spec["kubeflow"]["version"] = "v1.4.0"
    request = ClusterRequested.model_validate({"name": "team-a", "namespace": "default", "spec": spec})
    envelope = Envelope.new(request, cluster_id="default/team-a", now=NOW, event_id="invalid-1")
    await gateway_consumer.publisher.publish(envelope)
    rejected = await next_event(js, "cluster.rejected", answering("invalid-1"))
    assert (rejected.cluster_id, rejected.causation_id, rejected.data.request_id) == (
        "default/team-a",
        "invalid-1",
        "invalid-1",
    )
    [problem] = [p for p in rejected.data.problems if p.startswith("data.spec.kubeflow.version:")]
    assert "compatible with Kubernetes 1.36: v1.11.0" in problem

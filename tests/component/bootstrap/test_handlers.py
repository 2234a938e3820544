"""The bootstrap handler with its progress published to a real JetStream, and the host cluster and
the vNodes' exec faked: which commands run on which vNode, in which order, and what a failure says."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.api import admin_kubeconfig_secret_name
from libs.events import (
    Envelope,
    PermanentError,
    Publisher,
    Reason,
    StreamSettings,
    TransientError,
    ensure_stream,
)
from libs.events.catalog import ClusterKubernetesReady, ClusterVNodesReady, VNodeRef, VNodeSetupProgressed
from libs.kube.vnodes import CLUSTER_UID_LABEL, VNODE_LABEL, platform_namespace, pod_name, statefulset_name
from services.bootstrap.adapters.host import ClusterHost
from services.bootstrap.adapters.metrics import BootstrapMetrics
from services.bootstrap.adapters.node_exec import ExecResult, ExecUnavailable, NodeCommands
from services.bootstrap.handlers import PROGRESS, BootstrapHandlers
from services.bootstrap.settings import BootstrapSettings
from tests.support.events import NOW, spec_document
from tests.support.streams import events_on

UID = "c1d2e3f4-0000-4000-8000-000000000001"
NAMESPACE = platform_namespace("ml", "team-a")
MASTER_POD, WORKER_POD = pod_name("team-a", "master"), pod_name("team-a", "worker-0")
API_SERVER = "https://10.200.0.2:6443"
JOIN = "kubeadm join 10.200.0.2:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00"


def admin_kubeconfig(server: str = API_SERVER) -> str:
    data = base64.b64encode(b"not-a-real-pem").decode()
    return yaml.safe_dump(
        {
            "clusters": [{"name": "kubernetes", "cluster": {"server": server, "certificate-authority-data": data}}],
            "contexts": [{"name": "admin@kubernetes", "context": {"cluster": "kubernetes", "user": "admin"}}],
            "current-context": "admin@kubernetes",
            "users": [{"name": "admin", "user": {"client-certificate-data": data, "client-key-data": data}}],
        }
    )


def vnode_state(*, initialized: bool = False, joined: bool = False) -> str:
    return f'{{"initialized": {str(initialized).lower()}, "joined": {str(joined).lower()}, "kubernetesVersion": "v1.36.3"}}'


def vnode_command(argv: list[str]) -> str:
    """`vk8s-node <command>` as the handler runs it (through the vNode's shell); `write` for a file."""
    words = argv[3:] if argv[:3] == ["sh", "-c", 'exec "$0" "$@"'] else argv
    return words[1] if words[0] == "vk8s-node" else "write"


@dataclass
class FakeNodes:
    """The vNodes' exec: records each command run per pod and answers what the test configured."""

    states: dict[str, str] = field(default_factory=lambda: {MASTER_POD: vnode_state(), WORKER_POD: vnode_state()})
    kubeconfig: str = field(default_factory=admin_kubeconfig)
    exit_codes: dict[tuple[str, str], int] = field(default_factory=dict)
    unavailable: bool = False
    ran: list[tuple[str, str]] = field(default_factory=list)
    argvs: list[list[str]] = field(default_factory=list)

    async def run(self, namespace: str, pod: str, argv: list[str]) -> ExecResult:
        assert namespace == NAMESPACE
        if self.unavailable:
            raise ExecUnavailable("WSServerHandshakeError: 503")
        command = vnode_command(argv)
        self.ran.append((pod, command))
        self.argvs.append(argv)
        outputs = {
            "state": self.states[pod],
            "kubeconfig": self.kubeconfig,
            "join-command": JOIN,
            "server-version": '{"major": "1", "minor": "36", "gitVersion": "v1.36.3"}',
        }
        return ExecResult(self.exit_codes.get((pod, command), 0), outputs.get(command, ""), "kubeadm: it broke")


def vnode_pod(vnode: str, *, uid: str = UID) -> tuple[dict[str, Any], dict[str, Any]]:
    """A vNode pod and its StatefulSet as the vnode stage makes them."""
    labels = {CLUSTER_UID_LABEL: uid, VNODE_LABEL: vnode}
    owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": statefulset_name("team-a", vnode), "uid": f"sts-{vnode}", "controller": True}
    pod = {"metadata": {"namespace": NAMESPACE, "name": pod_name("team-a", vnode), "labels": labels, "ownerReferences": [owner]}}
    statefulset = {"metadata": {"namespace": NAMESPACE, "name": owner["name"], "uid": owner["uid"], "labels": labels}}
    return pod, statefulset


@dataclass
class FakeHost:
    """The host cluster: the Vk8s (`obj`), the vNode pods, and the kubeconfig Secrets written."""

    obj: dict[str, Any] | None = field(
        default_factory=lambda: {
            "apiVersion": "vk8s.skt.co.kr/v1alpha1",
            "kind": "Vk8s",
            "metadata": {"name": "team-a", "namespace": "ml", "uid": UID},
            "spec": spec_document(gpus=1, workers=1),
        }
    )
    pods: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(
        default_factory=lambda: {MASTER_POD: vnode_pod("master"), WORKER_POD: vnode_pod("worker-0")}
    )
    stored: list[tuple[str, str, str]] = field(default_factory=list)

    async def vk8s(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.obj

    async def pod_and_controller(self, namespace: str, pod: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return self.pods.get(pod, (None, None))

    async def store_kubeconfig(self, vk8s: dict[str, Any], platform_namespace: str, name: str, kubeconfig: str) -> None:
        self.stored.append((platform_namespace, name, kubeconfig))


def vnodes_ready() -> Envelope[ClusterVNodesReady]:
    refs = [
        VNodeRef(vnode="master", role="master", pod=MASTER_POD, host_node="gpu-node-0", ip="10.200.0.2", gpus=1),
        VNodeRef(vnode="worker-0", role="worker", pod=WORKER_POD, host_node="gpu-node-1", ip="10.200.0.3", gpus=1),
    ]
    data = ClusterVNodesReady(generation=1, vnodes=refs, pod_cidr="90.244.0.0/16", service_cidr="90.96.0.0/12")
    return Envelope.new(data, cluster_id="ml/team-a", now=NOW)


@pytest.fixture
def nodes() -> FakeNodes:
    return FakeNodes()


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
async def handlers(js: JetStreamContext, host: FakeHost, nodes: FakeNodes) -> BootstrapHandlers:
    await ensure_stream(js, StreamSettings())
    cluster_host: ClusterHost = host
    node_commands: NodeCommands = nodes
    return BootstrapHandlers(
        host=cluster_host,
        node_exec=node_commands,
        settings=BootstrapSettings(step_attempts=2, step_backoff_s=0),
        publisher=Publisher(js).only(PROGRESS),
        metrics=BootstrapMetrics(CollectorRegistry()),
        clock=lambda: NOW,
    )


async def progress_published(js: JetStreamContext) -> list[VNodeSetupProgressed]:
    """Every step progress in the test's stream (all published before the handler returned)."""
    return [event.data for event in await events_on(js, VNodeSetupProgressed.subject)]


def commands_on(nodes: FakeNodes, pod: str) -> list[str]:
    return [command for ran_on, command in nodes.ran if ran_on == pod]


def first(nodes: FakeNodes, pod: str, command: str) -> int:
    return nodes.ran.index((pod, command))


async def test_initialises_the_master_then_joins_the_worker_and_stores_the_admin_kubeconfig(
    handlers: BootstrapHandlers, host: FakeHost, nodes: FakeNodes, js: JetStreamContext
) -> None:
    (answer,) = await handlers.vnodes_ready(vnodes_ready())

    assert answer.data == ClusterKubernetesReady(
        generation=1,
        kubernetes_version="v1.36.3",
        kubeconfig_secret=admin_kubeconfig_secret_name("team-a"),
        api_server=API_SERVER,
        nodes=["master", "worker-0"],
    )
    assert first(nodes, MASTER_POD, "init") < first(nodes, MASTER_POD, "join-command") < first(nodes, WORKER_POD, "join")
    assert "init" not in commands_on(nodes, WORKER_POD) and "join" not in commands_on(nodes, MASTER_POD)
    (join_argv,) = [argv for argv in nodes.argvs if "join" in argv]
    assert "abcdef.0123456789abcdef" in join_argv and "--node-name=worker-0" in join_argv
    assert host.stored == [(NAMESPACE, admin_kubeconfig_secret_name("team-a"), nodes.kubeconfig)]
    progress = await progress_published(js)
    assert ("worker-0", "kubeadm-join", "Success") in {(p.vnode, p.step, p.status) for p in progress}


async def test_already_initialised_nodes_are_started_not_initialised_again(
    handlers: BootstrapHandlers, nodes: FakeNodes
) -> None:
    nodes.states = {MASTER_POD: vnode_state(initialized=True), WORKER_POD: vnode_state(joined=True)}

    (answer,) = await handlers.vnodes_ready(vnodes_ready())

    assert isinstance(answer.data, ClusterKubernetesReady)
    assert "start" in commands_on(nodes, MASTER_POD) and "start" in commands_on(nodes, WORKER_POD)
    assert {"init", "join", "join-command"}.isdisjoint(command for _, command in nodes.ran)


async def test_a_step_failing_every_try_fails_the_cluster_naming_the_vnode_and_step(
    handlers: BootstrapHandlers, host: FakeHost, nodes: FakeNodes, js: JetStreamContext
) -> None:
    nodes.exit_codes[(WORKER_POD, "join")] = 1

    with pytest.raises(PermanentError) as raised:
        await handlers.vnodes_ready(vnodes_ready())

    assert raised.value.reason == Reason.STEP_FAILED
    assert "worker-0: step kubeadm-join failed after 2 attempts" in str(raised.value)
    assert commands_on(nodes, WORKER_POD).count("join") == 2
    assert host.stored == []
    failed = [p for p in await progress_published(js) if p.status == "Failed"]
    assert [(p.vnode, p.step, p.attempt) for p in failed] == [("worker-0", "kubeadm-join", 2)]
    assert "kubeadm: it broke" in failed[0].message and "abcdef.0123456789abcdef" not in failed[0].message


async def test_exec_unavailable_is_retried_later_without_spending_a_try(
    handlers: BootstrapHandlers, host: FakeHost, nodes: FakeNodes
) -> None:
    nodes.unavailable = True

    with pytest.raises(TransientError) as raised:
        await handlers.vnodes_ready(vnodes_ready())

    assert raised.value.reason == Reason.EXEC_UNAVAILABLE
    assert host.stored == []


async def test_an_admin_kubeconfig_for_a_plain_http_server_is_refused(
    handlers: BootstrapHandlers, host: FakeHost, nodes: FakeNodes
) -> None:
    nodes.kubeconfig = admin_kubeconfig("http://10.200.0.2:6443")

    with pytest.raises(PermanentError) as raised:
        await handlers.vnodes_ready(vnodes_ready())

    assert raised.value.reason == Reason.KUBECONFIG_REFUSED
    assert host.stored == []


def another_clusters_worker(host: FakeHost) -> None:
    host.pods[WORKER_POD] = vnode_pod("worker-0", uid="another-cluster")


def worker_missing(host: FakeHost) -> None:
    del host.pods[WORKER_POD]


def vk8s_gone(host: FakeHost) -> None:
    host.obj = None


def vk8s_being_deleted(host: FakeHost) -> None:
    assert host.obj is not None
    host.obj["metadata"]["deletionTimestamp"] = NOW.isoformat()


@pytest.mark.parametrize("change", [another_clusters_worker, worker_missing, vk8s_gone, vk8s_being_deleted])
async def test_nothing_runs_on_a_pod_that_is_not_the_clusters_vnode_or_for_a_cluster_going(
    handlers: BootstrapHandlers, host: FakeHost, nodes: FakeNodes, change: Callable[[FakeHost], None]
) -> None:
    change(host)

    assert await handlers.vnodes_ready(vnodes_ready()) == []

    assert nodes.ran == [] and host.stored == []

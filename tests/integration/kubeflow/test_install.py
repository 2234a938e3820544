"""The kubeflow stage against a real API server standing for the virtual cluster (the testbed's,
with its controller-manager, scheduler and kwok nodes, so Deployments become available for real)
and real NATS."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import bcrypt
import pytest
import yaml
from kubernetes.aio import client
from nats.js import JetStreamContext

from libs.events import REGISTRY, Envelope, Publisher
from libs.events.catalog import ClusterFailed, ClusterKubernetesReady, ClusterReady, KubeflowProgressed
from libs.kube import GROUP, PLURAL, VERSION
from libs.kube.objects import owner_reference
from libs.kube.vnodes import cluster_labels, platform_namespace
from services.kubeflow.__main__ import wired
from services.kubeflow.settings import KubeflowSettings
from tests.support.events import NOW
from tests.support.platform import make_platform_namespace
from tests.support.services import running
from vk8s.testbed.fixtures import delete_namespace

ROOT = Path(__file__).resolve().parents[3]
BUNDLE = ROOT / "deploy/kubeflow/minimal"


def kubernetes_ready(secret: str, kube_config_path: Path) -> ClusterKubernetesReady:
    """What bootstrap announces; the testbed's API server stands for the inner one."""
    [cluster] = yaml.safe_load(kube_config_path.read_text())["clusters"]
    server = cluster["cluster"]["server"]
    return ClusterKubernetesReady(
        generation=1, kubernetes_version="1.29", kubeconfig_secret=secret, nodes=["master"], api_server=server
    )


MakeCluster = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_cluster(kube_api: client.ApiClient, namespace: str) -> AsyncIterator[MakeCluster]:
    """Makes the Vk8s and its Secrets as the gateway and bootstrap leave them: the password Secret in
    the tenant's namespace; the kubeconfig Secret in the cluster's platform namespace, labelled for
    the cluster (`labelled`), unless `platform_secret` is false; a copy in the tenant's namespace,
    which no service reads. Returns the kubeconfig Secret's name; platform namespaces are deleted after."""
    core = client.CoreV1Api(kube_api)
    made: list[str] = []

    async def make(kubeconfig: Path, node_port: int, *, labelled: bool = True, platform_secret: bool = True) -> str:
        await core.create_namespaced_secret(
            namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="team-kf-user"), string_data={"password": "kf-pass-1"})
        )
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Vk8s",
            "metadata": {"name": "team-kf", "namespace": namespace},
            "spec": {
                "nodes": [{"name": "master", "role": "master", "image": "ghcr.io/vk8s/kink:v1.29", "resources": {"limits": {"cpu": "4", "memory": "8Gi"}}}],
                "kubeflow": {"version": "v1.9.0", "email": "Kf.User@example.com", "passwordSecretRef": {"name": "team-kf-user", "key": "password"}},
                "ports": [{"name": "kubeflow", "port": node_port, "targetPort": node_port}],
            },
        }  # fmt: skip
        custom = client.CustomObjectsApi(kube_api)
        created = cast(dict[str, Any], await custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))
        platform = await make_platform_namespace(kube_api, created)
        made.append(platform)
        metadata = created["metadata"]
        labels = cluster_labels(namespace, metadata["name"], metadata["uid"]) if labelled else None
        data = {"kubeconfig": kubeconfig.read_text()}
        if platform_secret:
            secret = client.V1Secret(metadata=client.V1ObjectMeta(name="team-kf-kubeconfig", labels=labels), string_data=data)
            await core.create_namespaced_secret(platform, secret)
        copy = client.V1ObjectMeta(name="team-kf-kubeconfig", owner_references=[owner_reference(created)])
        await core.create_namespaced_secret(namespace, client.V1Secret(metadata=copy, string_data=data))
        return "team-kf-kubeconfig"

    yield make
    for platform in made:
        await delete_namespace(kube_api, platform)


def settings(nats_url: str, kubeconfig: Path, tmp_path: Path, **overrides: Any) -> KubeflowSettings:
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"default": {"directory": str(BUNDLE)}}))
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "kubeconfig": str(kubeconfig),
        "http_port": 0,
        "sources_file": sources,
        "poll_interval_s": 0.5,
        "round_delay_s": 0.2,
        "ready_timeout_s": 120,
        "bcrypt_rounds": 4,
        "consumer_concurrency": 1,
    }
    return KubeflowSettings(**{**values, **overrides})


async def collect(js: JetStreamContext, cluster_id: str, until: set[str], timeout: float = 150) -> list[Envelope[Any]]:
    """The cluster's events up to the first of `until`, or all of them seen within `timeout`."""
    sub = await js.subscribe("cluster.>", ordered_consumer=True)
    events: list[Envelope[Any]] = []
    try:
        async with asyncio.timeout(timeout):
            async for msg in sub.messages:
                event = REGISTRY.decode(msg.subject, msg.data)
                if event.cluster_id == cluster_id:
                    events.append(event)
                    if event.type in until:
                        return events
    except TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return events


async def test_installs_the_release_creates_the_user_and_reports_ready(
    kube_api: client.ApiClient, kube_config_path: Path, namespace: str, nats_url: str, js: JetStreamContext,
    tmp_path: Path, make_cluster: MakeCluster,
) -> None:  # fmt: skip
    node_port = random.randint(30100, 32700)
    secret = await make_cluster(kube_config_path, node_port)
    cluster_id = f"{namespace}/team-kf"
    async with running(wired(settings(nats_url, kube_config_path, tmp_path))):
        ready = kubernetes_ready(secret, kube_config_path)
        await Publisher(js).publish(Envelope.new(ready, cluster_id=cluster_id, now=NOW))
        events = await collect(js, cluster_id, {"cluster.ready", "cluster.failed"})

    assert events[-1].type == "cluster.ready", [e.data for e in events if isinstance(e.data, ClusterFailed)]
    assert isinstance(events[-1].data, ClusterReady)
    assert events[-1].data.kubeflow_release == "v1.9.0"
    progress = [e.data for e in events if isinstance(e.data, KubeflowProgressed)]
    assert [p.step for p in progress][:2] == ["apply", "user"]
    assert progress[-1].step == "ready" and progress[-1].ready == progress[-1].total == 7

    core = client.CoreV1Api(kube_api)
    dex = await core.read_namespaced_config_map("dex", "auth")
    [entry] = yaml.safe_load(dex.data["config.yaml"])["staticPasswords"]
    assert entry["email"] == "Kf.User@example.com"
    assert bcrypt.checkpw(b"kf-pass-1", entry["hash"].encode())
    profile = cast(dict[str, Any], await client.CustomObjectsApi(kube_api).get_cluster_custom_object("kubeflow.org", "v1", "profiles", "kf-user"))
    assert profile["spec"]["owner"]["name"] == "Kf.User@example.com"
    ui = await core.read_namespaced_service("vk8s-kubeflow-ui", "istio-system")
    assert ui.spec.type == "NodePort" and ui.spec.ports[0].node_port == node_port
    deployments = await client.AppsV1Api(kube_api).list_namespaced_deployment("kubeflow")
    assert {d.metadata.name for d in deployments.items} >= {"centraldashboard", "ml-pipeline", "profiles-deployment"}
    assert all((d.status.available_replicas or 0) >= 1 for d in deployments.items)
    # the password never left the Secret: not in any event
    assert all("kf-pass-1" not in e.to_json().decode() for e in events)


async def test_a_release_that_keeps_failing_to_apply_fails_the_cluster_after_bounded_rounds(
    kube_api: client.ApiClient, kube_config_path: Path, namespace: str, nats_url: str, js: JetStreamContext,
    tmp_path: Path, make_cluster: MakeCluster,
) -> None:  # fmt: skip
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.yaml").write_text(
        yaml.safe_dump({"apiVersion": "example.com/v1", "kind": "NoSuchKind", "metadata": {"name": "x", "namespace": "default"}})
    )
    secret = await make_cluster(kube_config_path, random.randint(30100, 32700))
    cluster_id = f"{namespace}/team-kf"
    sources = tmp_path / "broken-sources.yaml"
    sources.write_text(yaml.safe_dump({"default": {"directory": str(broken)}}))
    async with running(wired(settings(nats_url, kube_config_path, tmp_path, sources_file=sources, apply_rounds=3))):
        ready = kubernetes_ready(secret, kube_config_path)
        await Publisher(js).publish(Envelope.new(ready, cluster_id=cluster_id, now=NOW))
        events = await collect(js, cluster_id, {"cluster.ready", "cluster.failed"}, timeout=60)
    failed = events[-1].data
    assert isinstance(failed, ClusterFailed)
    assert failed.reason == "ApplyFailed" and failed.stage == "kubeflow"
    assert "after 3 apply rounds" in failed.message and "NoSuchKind" in failed.message
    rounds = [e.data.message.split(":")[0] for e in events if isinstance(e.data, KubeflowProgressed)]
    assert rounds == ["round 1", "round 2", "round 3"]


async def test_git_source_is_cloned_at_its_ref_and_built_with_kustomize(tmp_path: Path) -> None:
    from services.kubeflow.adapters import manifests
    from services.kubeflow.settings import GitSource, ManifestSource

    repo = tmp_path / "manifests"
    (repo / "example").mkdir(parents=True)
    for path in BUNDLE.glob("*.yaml"):
        (repo / "example" / path.name).write_text(path.read_text())
    (repo / "example" / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": sorted(p.name for p in BUNDLE.glob("*.yaml"))})
    )
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1.9.0"], check=True)
    subprocess.run([*git, "tag", "v1.9.0"], check=True)
    source = ManifestSource(git=GitSource(url=f"file://{repo}", ref="v1.9.0"))
    objects = await manifests.load(source, kubectl=str(ROOT / ".venv/bin/kubectl"), cache_dir=tmp_path / "cache")
    assert sorted({o["kind"] for o in objects}) == ["ConfigMap", "CustomResourceDefinition", "Deployment", "Namespace", "Service"]
    # cached: a second load does not clone again
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    again = await manifests.load(source, kubectl=str(ROOT / ".venv/bin/kubectl"), cache_dir=tmp_path / "cache")
    assert len(again) == len(objects)


async def test_a_kubeconfig_with_an_exec_plugin_is_refused_and_never_run(
    kube_api: client.ApiClient, kube_config_path: Path, namespace: str, nats_url: str, js: JetStreamContext,
    tmp_path: Path, make_cluster: MakeCluster,
) -> None:  # fmt: skip
    # What a tenant can write into <name>-kubeconfig: the loader of the official client would run it.
    marker = tmp_path / "exec-ran"
    hostile = yaml.safe_load(kube_config_path.read_text())
    for entry in hostile["users"]:
        entry["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "sh",
                                  "args": ["-c", f"id > {marker}; exit 1"]}}  # fmt: skip
    hostile_path = tmp_path / "hostile.kubeconfig"
    hostile_path.write_text(yaml.safe_dump(hostile))
    secret = await make_cluster(hostile_path, random.randint(30100, 32700))
    cluster_id = f"{namespace}/team-kf"
    async with running(wired(settings(nats_url, kube_config_path, tmp_path))):
        ready = kubernetes_ready(secret, kube_config_path)
        await Publisher(js).publish(Envelope.new(ready, cluster_id=cluster_id, now=NOW))
        events = await collect(js, cluster_id, {"cluster.ready", "cluster.failed"}, timeout=60)

    failed = events[-1].data
    assert isinstance(failed, ClusterFailed), [e.type for e in events]
    assert (failed.stage, failed.reason) == ("kubeflow", "KubeconfigRefused")
    assert failed.message.startswith(f"Secret {platform_namespace(namespace, 'team-kf')}/{secret}: users[")
    assert ".user.exec: refused" in failed.message
    assert not marker.exists(), marker.read_text()


@pytest.mark.parametrize("platform_secret", [True, False], ids=["unlabelled", "only-the-tenant-copy"])
async def test_a_kubeconfig_secret_the_platform_did_not_make_is_refused(
    kube_api: client.ApiClient, kube_config_path: Path, namespace: str, nats_url: str, js: JetStreamContext,
    tmp_path: Path, make_cluster: MakeCluster, platform_secret: bool,
) -> None:  # fmt: skip
    secret = await make_cluster(kube_config_path, random.randint(30100, 32700), labelled=False, platform_secret=platform_secret)
    cluster_id = f"{namespace}/team-kf"
    async with running(wired(settings(nats_url, kube_config_path, tmp_path))):
        await Publisher(js).publish(Envelope.new(kubernetes_ready(secret, kube_config_path), cluster_id=cluster_id, now=NOW))
        events = await collect(js, cluster_id, {"cluster.ready", "cluster.failed"}, timeout=60)
    failed = events[-1].data
    assert isinstance(failed, ClusterFailed), [e.type for e in events]
    platform = platform_namespace(namespace, "team-kf")
    if platform_secret:
        assert failed.reason == "KubeconfigRefused"
        assert failed.message == (
            f"Secret {platform}/{secret} is not labelled for the cluster "
            f"(uid {(await cluster_uid(kube_api, namespace))}); the platform's kubeconfig Secret is"
        )
    else:  # the tenant's copy is never read
        assert (failed.reason, failed.message) == ("SecretMissing", f"Secret {platform}/{secret} not found")


async def test_an_event_naming_another_secret_is_refused_and_nothing_is_installed(
    kube_api: client.ApiClient, kube_config_path: Path, namespace: str, nats_url: str, js: JetStreamContext,
    tmp_path: Path, make_cluster: MakeCluster,
) -> None:  # fmt: skip
    await make_cluster(kube_config_path, random.randint(30100, 32700))
    cluster_id = f"{namespace}/team-kf"
    forged = kubernetes_ready("team-kf-user", kube_config_path)  # any Secret of the namespace
    async with running(wired(settings(nats_url, kube_config_path, tmp_path))):
        await Publisher(js).publish(Envelope.new(forged, cluster_id=cluster_id, now=NOW))
        events = await collect(js, cluster_id, {"cluster.ready", "cluster.failed", "cluster.kubeflow.progress"}, timeout=8)
    assert [e.type for e in events] == ["cluster.kubernetes.ready"], "nothing applied, nothing failed"


async def cluster_uid(api: client.ApiClient, namespace: str) -> str:
    obj = cast(dict[str, Any], await client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "team-kf"))
    return str(obj["metadata"]["uid"])

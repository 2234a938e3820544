"""The gateway in-process against a real kube-apiserver and a real nats-server: both entry points,
the finalizer's life, plain passwords, and the resync after a restart."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.api.images import ImagePolicy
from libs.events import REGISTRY, STREAM_NAME, Envelope, Publisher, ensure_kv
from libs.events.catalog import ClusterDeleted, ClusterRejected, ClusterRequested
from libs.kube import FINALIZER, GROUP, PLURAL, VERSION, read_vk8s
from libs.kube.vnodes import (
    CLUSTER_UID_LABEL,
    RETAINED_VOLUMES_ANNOTATION,
    TENANT_NAMESPACE_LABEL,
    cluster_labels,
    platform_namespace,
)
from libs.runtime import Service
from services.gateway.__main__ import wired
from services.gateway.adapters.kubernetes import ClusterObjects
from services.gateway.adapters.ledger import Ledger
from services.gateway.adapters.metrics import GatewayMetrics
from services.gateway.handlers import GatewayHandlers
from services.gateway.logic import PAUSED_ANNOTATION, REQUEST_ID_ANNOTATION
from services.gateway.settings import GatewaySettings, ServiceBinding
from tests.support.events import NOW, spec_document
from tests.support.services import running
from tests.support.wait import eventually
from vk8s.testbed.fixtures import create_namespace, delete_namespace

NAME = "team-a"
PASSWORD = "n0t-in-any-event"
SECRET = spec_document()["kubeflow"]["passwordSecretRef"]["name"]


class Cluster:
    """One Vk8s of the test's namespace, and the events about it in the stream."""

    def __init__(self, api: client.ApiClient, js: JetStreamContext, namespace: str, name: str = NAME):
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.js = js
        self.namespace = namespace
        self.name = name
        self.cluster_id = f"{namespace}/{name}"

    def manifest(self, spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Vk8s",
            "metadata": {"name": self.name, "namespace": self.namespace, **metadata},
            "spec": spec or spec_document(),
        }

    async def apply(self, spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
        """Creates the object, as `kubectl apply` of a new one does; an existing one is left as it is."""
        try:
            created = await self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.manifest(spec, **metadata)
            )
            return cast(dict[str, Any], created)
        except ApiException as error:
            if error.status != 409:
                raise
            existing = await self.get()
            assert existing is not None, f"{self.name} existed (409) but is gone"
            return existing

    async def get(self) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], await self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def patch(self, patch: dict[str, Any]) -> dict[str, Any]:
        patched = await self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, patch, _content_type="application/merge-patch+json"
        )
        return cast(dict[str, Any], patched)

    async def delete(self) -> None:
        await self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)

    async def events(self, subject: str | None = None) -> list[Envelope[Any]]:
        """Every event about this cluster in the stream, oldest first."""
        last = (await self.js.stream_info(STREAM_NAME)).state.last_seq
        if last == 0:
            return []
        found: list[Envelope[Any]] = []
        sub = await self.js.subscribe("cluster.>", ordered_consumer=True)
        try:
            while True:
                msg = await sub.next_msg(timeout=5)
                event = REGISTRY.decode(msg.subject, msg.data)
                if event.cluster_id == self.cluster_id and subject in (None, event.type):
                    found.append(event)
                if msg.metadata.sequence.stream >= last:
                    return found
        finally:
            await sub.unsubscribe()

    async def next(self, subject: str, count: int = 1, timeout: float = 30.0) -> list[Envelope[Any]]:
        """Waits until at least `count` events of `subject` are in the stream; returns them all."""

        async def enough() -> list[Envelope[Any]] | None:
            found = await self.events(subject)
            return found if len(found) >= count else None

        return await eventually(enough, f"{count} x {subject} for {self.cluster_id}", timeout)

    async def settled(self, subject: str, seconds: float = 2.0) -> list[Envelope[Any]]:
        """The events of `subject` after giving any second path time to publish a duplicate."""
        await asyncio.sleep(seconds)
        return await self.events(subject)


async def create_password_secret(api: client.ApiClient, namespace: str, name: str, key: str = "password") -> None:
    body = client.V1Secret.model_validate({"metadata": {"name": name}, "stringData": {key: PASSWORD}})
    await client.CoreV1Api(api).create_namespaced_secret(namespace, body)


@pytest.fixture
async def cluster(kube_api: client.ApiClient, js: JetStreamContext, namespace: str) -> AsyncIterator[Cluster]:
    # The Secret spec_document's requests name: the gateway checks it exists before accepting.
    await create_password_secret(kube_api, namespace, SECRET)
    yield Cluster(kube_api, js, namespace)
    # Nothing serves cluster.deleted once the test ends: let the namespace's deletion finish.
    custom = client.CustomObjectsApi(kube_api)
    listing = cast(dict[str, Any], await custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))
    for item in listing["items"]:
        await delete_namespace(kube_api, platform_namespace(namespace, item["metadata"]["name"]))
        with contextlib.suppress(ApiException):
            await custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )


@pytest.fixture
async def settings(
    nats_url: str, kube_config_path: Path, kube_api: client.ApiClient, namespace: str
) -> GatewaySettings:
    # A CRD applied moments ago answers 429 while its storage initialises.
    custom = client.CustomObjectsApi(kube_api)

    async def serving() -> bool:
        try:
            await custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        except ApiException as error:
            if error.status != 429:
                raise
            return False
        return True

    await eventually(serving, "the Vk8s resource to be served")
    return GatewaySettings(
        nats_url=nats_url,
        kubeconfig=str(kube_config_path),
        http_port=0,
        namespace=namespace,
        reconcile_retry_s=0.1,
        backoff_base_s=0.1,
    )


@pytest.fixture
async def gateway(settings: GatewaySettings, cluster: Cluster) -> AsyncIterator[Service]:
    # Depends on `cluster` so it stops before that fixture strips the finalizers.
    async with running(wired(settings)) as service:
        yield service


def metric(service: Service, name: str, labels: dict[str, str] | None = None) -> float:
    return service.metrics_registry.get_sample_value(name, labels or {}) or 0.0


async def has_finalizer(cluster: Cluster) -> dict[str, Any] | None:
    obj = await cluster.get()
    return obj if obj is not None and FINALIZER in (obj["metadata"].get("finalizers") or []) else None


def request_on_nats(cluster: Cluster, event_id: str, spec: dict[str, Any] | None = None) -> Envelope[ClusterRequested]:
    request = ClusterRequested.model_validate(
        {"name": cluster.name, "namespace": cluster.namespace, "spec": spec or spec_document(), "labels": {"team": "a"}}
    )
    return Envelope.new(request, cluster_id=cluster.cluster_id, now=NOW, event_id=event_id)


def only(events: Sequence[Envelope[Any]]) -> Envelope[Any]:
    assert len(events) == 1, [event.id for event in events]
    return events[0]


async def test_applied_vk8s_gets_the_finalizer_and_is_accepted_once(gateway: Service, cluster: Cluster) -> None:
    created = await cluster.apply(labels={"team": "a"})
    uid = created["metadata"]["uid"]
    await eventually(lambda: has_finalizer(cluster), "the cleanup finalizer")
    [accepted] = await cluster.next("cluster.accepted")
    requested = only(await cluster.events("cluster.requested"))
    assert (requested.data.uid, requested.data.generation) == (uid, 1)
    assert (accepted.id, accepted.causation_id) == (f"accepted-{uid}-1", requested.id)
    assert (accepted.data.uid, accepted.data.generation, accepted.data.labels) == (uid, 1, {"team": "a"})
    only(await cluster.settled("cluster.accepted"))


async def test_label_and_pause_changes_are_published_as_updates(gateway: Service, cluster: Cluster) -> None:
    created = await cluster.apply()
    await cluster.next("cluster.accepted")
    await cluster.patch({"metadata": {"labels": {"tier": "gold"}}})
    [relabelled] = await cluster.next("cluster.updated")
    assert (relabelled.data.uid, relabelled.data.generation) == (created["metadata"]["uid"], 1)
    assert relabelled.data.labels == {"tier": "gold"} and relabelled.data.paused is False
    await cluster.patch({"metadata": {"annotations": {PAUSED_ANNOTATION: "true"}}})
    paused = (await cluster.next("cluster.updated", count=2))[-1]
    assert paused.data.paused is True
    only(await cluster.events("cluster.accepted"))


async def test_pause_resume_pause_resume_quickly_publishes_each_change(gateway: Service, cluster: Cluster) -> None:
    """Within the duplicate window: the second pause and resume are changes of their own, not
    duplicates of the first (which the broker would drop, leaving the cluster paused)."""
    await cluster.apply()
    await cluster.next("cluster.accepted")
    for paused in ({PAUSED_ANNOTATION: "true"}, {PAUSED_ANNOTATION: None}) * 2:
        await cluster.patch({"metadata": {"annotations": paused}})
    updates = await cluster.next("cluster.updated", count=4)
    assert [update.data.paused for update in updates] == [True, False, True, False]
    assert len({update.id for update in updates}) == 4
    assert len(await cluster.settled("cluster.updated")) == 4


async def test_request_on_nats_creates_the_object_and_is_accepted_once(
    gateway: Service, cluster: Cluster, js: JetStreamContext
) -> None:
    await Publisher(js).publish(request_on_nats(cluster, "nats-request-1"))
    obj = await eventually(cluster.get, "the Vk8s object")
    assert obj["metadata"]["annotations"][REQUEST_ID_ANNOTATION] == "nats-request-1"
    assert FINALIZER in obj["metadata"]["finalizers"]
    assert obj["metadata"]["labels"] == {"team": "a"}
    [accepted] = await cluster.next("cluster.accepted")
    assert accepted.id == f"accepted-{obj['metadata']['uid']}-1"
    assert accepted.correlation_id == "nats-request-1"
    only(await cluster.settled("cluster.accepted"))
    assert await cluster.events("cluster.rejected") == []
    assert metric(gateway, "vk8s_gateway_requests_total", {"source": "nats", "outcome": "accepted"}) == 1
    # The watch saw the object the request made and left it to that request: no request of its own.
    [request] = await cluster.events("cluster.requested")
    assert request.id == "nats-request-1"


@pytest.mark.parametrize("order", ["object-first", "together"])
async def test_same_cluster_as_object_and_nats_request_is_provisioned_once(
    gateway: Service, cluster: Cluster, js: JetStreamContext, order: str
) -> None:
    request = request_on_nats(cluster, f"nats-request-{order}")
    if order == "object-first":
        await cluster.apply(labels={"team": "a"})
        await Publisher(js).publish(request)
    else:
        await asyncio.gather(cluster.apply(labels={"team": "a"}), Publisher(js).publish(request))
    await cluster.next("cluster.accepted")
    obj = await cluster.get()
    assert obj is not None
    accepted = only(await cluster.settled("cluster.accepted", seconds=3.0))
    assert accepted.id == f"accepted-{obj['metadata']['uid']}-1"
    assert await cluster.events("cluster.rejected") == []
    # The NATS request was answered with that acceptance, or found it made; the watch path may
    # not have needed a request at all (the ledger already knew the object).
    nats_answers = [
        metric(gateway, "vk8s_gateway_requests_total", {"source": "nats", "outcome": outcome})
        for outcome in ("accepted", "already_accepted")
    ]
    assert sum(nats_answers) == 1


async def test_conflicting_request_on_nats_is_rejected(
    gateway: Service, cluster: Cluster, js: JetStreamContext
) -> None:
    await cluster.apply()
    await cluster.next("cluster.accepted")
    await Publisher(js).publish(request_on_nats(cluster, "conflicting-1", spec_document(gpus=2)))
    [rejected] = await cluster.next("cluster.rejected")
    assert rejected.data.request_id == "conflicting-1"
    assert "exists already" in rejected.data.problems[0]


async def test_deletion_requests_cleanup_and_cluster_deleted_releases_the_object(
    gateway: Service, cluster: Cluster, js: JetStreamContext
) -> None:
    created = await cluster.apply()
    uid = created["metadata"]["uid"]
    [accepted] = await cluster.next("cluster.accepted")
    await cluster.delete()
    [delete_requested] = await cluster.next("cluster.delete.requested")
    assert delete_requested.data.uid == uid
    # The finalizer holds the object until the pipeline has freed everything.
    await asyncio.sleep(1.0)
    held = await cluster.get()
    assert held is not None and held["metadata"].get("deletionTimestamp")
    await Publisher(js).publish(accepted.follow(ClusterDeleted(uid=uid), now=NOW))
    await eventually(lambda: _gone(cluster), "the object to disappear")
    only(await cluster.events("cluster.delete.requested"))


@pytest.mark.parametrize("retained", [False, True], ids=["deleted", "holding-retained-volumes"])
async def test_the_platform_namespace_is_made_before_acceptance_and_gone_before_the_object_is_released(
    gateway: Service, cluster: Cluster, js: JetStreamContext, retained: bool
) -> None:
    created = await cluster.apply()
    uid = created["metadata"]["uid"]
    [accepted] = await cluster.next("cluster.accepted")
    core = cluster.core
    platform = platform_namespace(cluster.namespace, cluster.name)
    made = await core.read_namespace(platform)
    assert made.metadata.labels == {
        "app": "vk8s",
        "clusterName": cluster.name,
        "vk8s.skt.co.kr/cluster-uid": uid,
        "vk8s.skt.co.kr/tenant-namespace": cluster.namespace,
        "kubernetes.io/metadata.name": platform,
    }
    # Something of the cluster inside it, that the namespace's deletion has to remove first.
    await core.create_namespaced_config_map(platform, {"metadata": {"name": "left-over"}})
    if retained:  # as the vnode stage marks it when it keeps the volume claims
        await core.patch_namespace(platform, {"metadata": {"annotations": {RETAINED_VOLUMES_ANNOTATION: "true"}}})
    await cluster.delete()
    await cluster.next("cluster.delete.requested")

    await Publisher(js).publish(accepted.follow(ClusterDeleted(uid=uid), now=NOW))

    await eventually(lambda: _gone(cluster), "the object to disappear", timeout=60)
    if retained:
        assert (await core.read_namespace(platform)).metadata.deletion_timestamp is None, "left to the operator"
        return
    with pytest.raises(ApiException) as gone:
        await core.read_namespace(platform)
    assert gone.value.status == 404, "the finalizer went only once the namespace had"


@pytest.mark.parametrize(
    "labels",
    [{}, {CLUSTER_UID_LABEL: "another-uid"}, {TENANT_NAMESPACE_LABEL: "another-tenant"}],
    ids=["unlabelled", "another-cluster", "another-tenant"],
)
async def test_a_namespace_not_labelled_as_the_clusters_platform_namespace_is_not_deleted(
    kube_api: client.ApiClient, namespace: str, labels: dict[str, str]
) -> None:
    """RBAC lets the gateway delete any namespace: its delete path checks the labels itself."""
    uid = str(uuid.uuid4())
    name = f"c-{uuid.uuid4().hex[:8]}"
    platform = platform_namespace(namespace, name)
    core = client.CoreV1Api(kube_api)
    # Unlabelled, or labelled as the cluster's but for one label.
    found_labels = {**cluster_labels(namespace, name, uid), **labels} if labels else {}
    await core.create_namespace({"metadata": {"name": platform, "labels": found_labels}})
    try:
        with structlog.testing.capture_logs() as logs:
            assert await ClusterObjects(kube_api).delete_platform_namespace(namespace, name, uid) is None
        assert (await core.read_namespace(platform)).metadata.deletion_timestamp is None
        [refusal] = [entry for entry in logs if entry["event"].startswith("Not deleting namespace")]
        assert refusal["platform_namespace"] == platform
        assert refusal["mismatch"]
        # The same namespace labelled as the cluster's goes.
        await core.patch_namespace(platform, {"metadata": {"labels": cluster_labels(namespace, name, uid)}})
        assert await ClusterObjects(kube_api).delete_platform_namespace(namespace, name, uid) == platform
        assert (await core.read_namespace(platform)).metadata.deletion_timestamp is not None
    finally:
        await delete_namespace(kube_api, platform)


async def test_a_platform_namespace_without_the_services_bindings_gets_them_unless_it_is_not_the_clusters(
    kube_api: client.ApiClient, namespace: str
) -> None:
    """As after an upgrade: a platform namespace made before the gateway bound roles gets the bindings
    (idempotently); one labelled for another cluster gets none; a missing one is no error."""
    binding = ServiceBinding(role="view", service_account="probe", namespace=namespace)
    objects = ClusterObjects(kube_api, platform_bindings=(binding,))
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    uid, name, foreign = str(uuid.uuid4()), f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    ours, theirs = platform_namespace(namespace, name), platform_namespace(namespace, foreign)
    await core.create_namespace({"metadata": {"name": ours, "labels": cluster_labels(namespace, name, uid)}})
    await core.create_namespace({"metadata": {"name": theirs, "labels": cluster_labels(namespace, foreign, "another-uid")}})
    try:
        for _ in range(2):
            await objects.ensure_platform_bindings(namespace, name, uid)
        made = await rbac.read_namespaced_role_binding("view", ours)
        assert made.role_ref.kind == "ClusterRole" and made.role_ref.name == "view"
        assert [(s.kind, s.name, s.namespace) for s in made.subjects or []] == [("ServiceAccount", "probe", namespace)]
        await objects.ensure_platform_bindings(namespace, foreign, uid)
        assert not (await rbac.list_namespaced_role_binding(theirs)).items
        await objects.ensure_platform_bindings(namespace, f"c-{uuid.uuid4().hex[:8]}", uid)  # no namespace: nothing
    finally:
        await delete_namespace(kube_api, ours)
        await delete_namespace(kube_api, theirs)


async def test_a_deletion_a_stage_gave_up_on_is_requested_again_until_it_ends(
    settings: GatewaySettings, cluster: Cluster, js: JetStreamContext
) -> None:
    # Relist every 10 s (the least allowed); a deletion still held 3 s after its request is due again.
    resyncing = settings.model_copy(update={"watch_timeout_s": 10, "delete_resync_s": 3.0})
    async with running(wired(resyncing)):
        created = await cluster.apply()
        uid = created["metadata"]["uid"]
        await cluster.next("cluster.accepted")
        await cluster.delete()
        [first] = await cluster.next("cluster.delete.requested")
        # A stage gives up: nothing ends the chain. The next relist requests the deletion again.
        requests = await cluster.next("cluster.delete.requested", count=2, timeout=40)
        assert [r.id for r in requests[:2]] == [f"delete-requested-{uid}", f"delete-requested-{uid}-resync-1"]
        assert requests[1].data.uid == uid and requests[1].time > first.time
        # This time the chain ends: the finalizer goes and the object with it.
        await Publisher(js).publish(requests[1].follow(ClusterDeleted(uid=uid), now=NOW))
        await eventually(lambda: _gone(cluster), "the object to disappear")


async def _gone(cluster: Cluster) -> bool:
    return await cluster.get() is None


async def test_plain_password_moves_into_a_secret_and_never_into_events_or_logs(
    gateway: Service, cluster: Cluster
) -> None:
    spec = spec_document()
    spec["kubeflow"] = {"version": "v1.11.0", "email": "user@example.com", "password": PASSWORD}
    with structlog.testing.capture_logs() as logs:
        created = await cluster.apply(spec)
        [accepted] = await cluster.next("cluster.accepted")
    reference = accepted.data.spec.kubeflow.password_secret_ref
    assert (reference.name, reference.key) == (f"{NAME}-kubeflow-user", "password")
    secret = await cluster.core.read_namespaced_secret(reference.name, cluster.namespace)
    assert base64.b64decode(secret.data["password"]).decode() == PASSWORD
    [owner] = secret.metadata.owner_references or []
    assert (owner.kind, owner.uid) == ("Vk8s", created["metadata"]["uid"])
    # A new password in the spec replaces the one in the Secret.
    with structlog.testing.capture_logs() as more_logs:
        await cluster.patch({"spec": {"kubeflow": {"password": f"{PASSWORD}-2"}}})
        [updated] = await cluster.next("cluster.updated")
    assert updated.data.generation == 2
    secret = await cluster.core.read_namespaced_secret(reference.name, cluster.namespace)
    assert base64.b64decode(secret.data["password"]).decode() == f"{PASSWORD}-2"
    for event in await cluster.events():
        assert PASSWORD.encode() not in event.to_json()
    assert logs and more_logs and PASSWORD not in repr(logs + more_logs)
    warnings = await cluster.core.list_namespaced_event(cluster.namespace)
    assert any(
        e.reason == "PlainPasswordDeprecated" and e.involved_object.uid == created["metadata"]["uid"]
        for e in warnings.items
    )


async def test_one_object_that_cannot_be_reconciled_does_not_stop_the_others(
    gateway: Service, cluster: Cluster, kube_api: client.ApiClient, js: JetStreamContext
) -> None:
    """A plain password whose Secret `<name>-kubeflow-user` exists immutable with another value: its
    object fails every try. It says why on its status and is tried again with backoff, while the
    gateway runs on and provisions a good object applied after it; once the Secret is fixed, it
    goes through too."""
    poisoned = Cluster(kube_api, js, cluster.namespace, "poisoned")
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="poisoned-kubeflow-user"), data={"password": "b2xk"}, immutable=True
    )
    await cluster.core.create_namespaced_secret(cluster.namespace, secret)
    spec = spec_document()
    spec["kubeflow"] = {"version": "v1.11.0", "email": "user@example.com", "password": PASSWORD}
    await poisoned.apply(spec)

    async def reported() -> dict[str, Any] | None:
        obj = await poisoned.get()
        return ((obj or {}).get("status") or {}).get("reconcile")

    first = await eventually(reported, "the failure on the poisoned object's status")
    assert first["reason"] == "Invalid" and "immutable" in first["message"], first
    await cluster.apply()
    await cluster.next("cluster.accepted")
    assert await poisoned.events("cluster.requested") == []
    later = await eventually(
        lambda: _more_attempts(reported, first["attempts"] + 2), "more tries of the poisoned object"
    )
    assert later["nextAttemptTime"] > later["lastAttemptTime"]

    await cluster.core.delete_namespaced_secret("poisoned-kubeflow-user", cluster.namespace)
    await poisoned.next("cluster.accepted")
    await eventually(lambda: _true(reported, None), "the failure to leave the status")


async def test_an_applied_object_naming_a_missing_password_secret_waits_for_it(
    gateway: Service, cluster: Cluster, kube_api: client.ApiClient, js: JetStreamContext
) -> None:
    """Noticed at acceptance, not at the Kubeflow stage: nothing is requested while the Secret (or
    its key) is missing, the status says which field names what, and creating it lets it through."""
    namespace = cluster.namespace
    waiting = Cluster(kube_api, js, namespace, "waits-for-secret")
    spec = spec_document()
    spec["kubeflow"]["passwordSecretRef"] = {"name": "comes-later", "key": "password"}
    await waiting.apply(spec)

    async def reported() -> dict[str, Any] | None:
        obj = await waiting.get()
        return ((obj or {}).get("status") or {}).get("reconcile")

    first = await eventually(reported, "the missing Secret on the object's status")
    assert first["reason"] == "PasswordSecretMissing", first
    assert first["message"].startswith(
        f"spec.kubeflow.passwordSecretRef.name: Secret 'comes-later' does not exist in namespace '{namespace}'"
    ), first
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="comes-later"), string_data={"other": "x"})
    await waiting.core.create_namespaced_secret(namespace, secret)
    wrong_key = await eventually(
        lambda: _more_attempts(reported, first["attempts"] + 1), "another try, with the key missing"
    )
    assert wrong_key["message"] == "spec.kubeflow.passwordSecretRef.key: Secret 'comes-later' has no key 'password'"
    assert await waiting.events("cluster.requested") == []

    await waiting.core.patch_namespaced_secret("comes-later", namespace, {"stringData": {"password": PASSWORD}})
    await waiting.next("cluster.accepted", timeout=60)
    await eventually(lambda: _true(reported, None), "the wait to leave the status")


async def _more_attempts(read: Callable[[], Awaitable[dict[str, Any] | None]], attempts: int) -> dict[str, Any] | None:
    status = await read()
    return status if status is not None and status["attempts"] >= attempts else None


async def _true(read: Callable[[], Awaitable[object]], expected: object) -> bool:
    return await read() == expected


async def test_restart_publishes_for_an_object_created_while_down(
    settings: GatewaySettings, cluster: Cluster
) -> None:
    async with running(wired(settings)):
        pass  # the gateway has run before: its stream, consumer and ledger exist
    created = await cluster.apply()
    async with running(wired(settings)) as service:
        [accepted] = await cluster.next("cluster.accepted")
        assert accepted.data.uid == created["metadata"]["uid"]
        assert metric(service, "vk8s_gateway_resync_published_total", {"event": "cluster.requested"}) == 1


async def test_restart_requests_cleanup_for_an_object_deleted_while_down(
    settings: GatewaySettings, cluster: Cluster
) -> None:
    async with running(wired(settings)):
        created = await cluster.apply()
        await cluster.next("cluster.accepted")
    # Deleted with the gateway down, and its finalizer forced away: the pipeline never heard of it.
    await cluster.patch({"metadata": {"finalizers": None}})
    await cluster.delete()
    await eventually(lambda: _gone(cluster), "the object to disappear")
    async with running(wired(settings)) as service:
        [delete_requested] = await cluster.next("cluster.delete.requested")
        assert delete_requested.data.uid == created["metadata"]["uid"]
        assert metric(service, "vk8s_gateway_resync_published_total", {"event": "cluster.delete.requested"}) == 1


# --- referenced objects, checked before anything is created ----------------------------------------


@pytest.fixture
async def handler(
    kube_api: client.ApiClient, js: JetStreamContext, settings: GatewaySettings
) -> AsyncIterator[GatewayHandlers]:
    """The gateway's request handler alone, serving every namespace (no watch runs, so no other
    test's objects are touched)."""
    serving_all = settings.model_copy(update={"namespace": None})
    yield GatewayHandlers(
        objects=ClusterObjects(kube_api, reserved_namespaces=serving_all.reserved_namespaces),
        ledger=Ledger(await ensure_kv(js, serving_all.kv_bucket)),
        publisher=Publisher(js),
        metrics=GatewayMetrics(CollectorRegistry()),
        settings=serving_all,
    )


async def rejected_at_once(handler: GatewayHandlers, request: Envelope[ClusterRequested]) -> list[str]:
    started = time.monotonic()
    [answer] = await handler.on_cluster_requested(request)
    assert time.monotonic() - started < 10, "answered at once, not after retries"
    assert isinstance(answer.data, ClusterRejected)
    assert (answer.causation_id, answer.correlation_id, answer.data.request_id) == (request.id, request.id, request.id)
    return answer.data.problems


async def test_request_for_a_namespace_that_does_not_exist_is_rejected_naming_it(handler: GatewayHandlers) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    request = ClusterRequested.model_validate({"name": NAME, "namespace": missing, "spec": spec_document()})
    envelope = Envelope.new(request, cluster_id=f"{missing}/{NAME}", now=NOW, event_id="no-namespace-1")
    assert await rejected_at_once(handler, envelope) == [
        f"data.namespace: namespace '{missing}' does not exist; create it first"
    ]


async def test_request_for_a_reserved_or_platform_namespace_is_rejected_and_makes_nothing(
    handler: GatewayHandlers, kube_api: client.ApiClient, namespace: str
) -> None:
    """Hostile input: a requester allowed every namespace still gets no cluster in the host's own namespaces nor
    in another cluster's platform namespace (where its vNodes and credentials are)."""
    core = client.CoreV1Api(kube_api)
    platform = await create_namespace(kube_api, prefix="vk8s-platform-like-")
    try:
        await core.patch_namespace(platform, {"metadata": {"labels": {CLUSTER_UID_LABEL: str(uuid.uuid4())}}})
        for target, problem in (
            ("kube-system", "namespace 'kube-system' is reserved for the host cluster"),
            (platform, f"namespace '{platform}' is the platform namespace of a virtual cluster"),
        ):
            request = ClusterRequested.model_validate({"name": NAME, "namespace": target, "spec": spec_document()})
            envelope = Envelope.new(request, cluster_id=f"{target}/{NAME}", now=NOW, event_id=f"into-{target}")
            [found] = await rejected_at_once(handler, envelope)
            assert found.startswith(f"data.namespace: {problem}"), found
            listed = await client.CustomObjectsApi(kube_api).list_namespaced_custom_object(GROUP, VERSION, target, PLURAL)
            assert listed["items"] == [], target
    finally:
        await delete_namespace(kube_api, platform)


async def test_request_naming_a_password_secret_that_does_not_exist_is_rejected_naming_it(
    handler: GatewayHandlers, kube_api: client.ApiClient, namespace: str
) -> None:
    spec = spec_document()
    spec["kubeflow"]["passwordSecretRef"] = {"name": "not-there", "key": "password"}
    request = ClusterRequested.model_validate({"name": NAME, "namespace": namespace, "spec": spec})
    envelope = Envelope.new(request, cluster_id=f"{namespace}/{NAME}", now=NOW, event_id="no-secret-1")
    [problem] = await rejected_at_once(handler, envelope)
    assert problem.startswith(
        f"data.spec.kubeflow.passwordSecretRef.name: Secret 'not-there' does not exist in namespace '{namespace}'"
    ), problem
    assert await read_vk8s(kube_api, namespace, NAME) is None, "nothing is created for a rejected request"


async def test_request_naming_a_secret_without_the_key_is_rejected_naming_it(
    handler: GatewayHandlers, kube_api: client.ApiClient, namespace: str
) -> None:
    await create_password_secret(kube_api, namespace, "wrong-key", key="pass")
    spec = spec_document()
    spec["kubeflow"]["passwordSecretRef"] = {"name": "wrong-key", "key": "password"}
    request = ClusterRequested.model_validate({"name": NAME, "namespace": namespace, "spec": spec})
    envelope = Envelope.new(request, cluster_id=f"{namespace}/{NAME}", now=NOW, event_id="no-key-1")
    assert await rejected_at_once(handler, envelope) == [
        "data.spec.kubeflow.passwordSecretRef.key: Secret 'wrong-key' has no key 'password'"
    ]
    assert await read_vk8s(kube_api, namespace, NAME) is None


def with_node_image(image: str) -> dict[str, Any]:
    spec = spec_document()
    spec["nodes"][0]["image"] = image
    return spec


NOT_ALLOWED = "spec.nodes[0].image: 'evil.example.com/kink:v1.36' is not from an allowed repository; allowed: "


async def test_applied_vk8s_with_a_node_image_outside_the_allowlist_is_rejected(
    gateway: Service, cluster: Cluster
) -> None:
    await cluster.apply(with_node_image("evil.example.com/kink:v1.36"))
    [rejected] = await cluster.next("cluster.rejected")
    assert rejected.data.problems == [NOT_ALLOWED + "ghcr.io/vk8s/kink"]
    assert await cluster.settled("cluster.requested") == []
    assert await cluster.events("cluster.accepted") == []


async def test_nats_request_with_a_node_image_outside_the_allowlist_creates_nothing(
    settings: GatewaySettings, cluster: Cluster, js: JetStreamContext
) -> None:
    policy = {"repositories": ["registry.local/kink", "ghcr.io/vk8s"]}
    async with running(wired(settings.model_copy(update={"image_policy": ImagePolicy.model_validate(policy)}))):
        request = request_on_nats(cluster, "evil-image-1", with_node_image("evil.example.com/kink:v1.36"))
        await Publisher(js).publish(request)
        [rejected] = await cluster.next("cluster.rejected")
        assert rejected.data.request_id == "evil-image-1"
        assert rejected.data.problems == ["data." + NOT_ALLOWED + "registry.local/kink, ghcr.io/vk8s"]
        assert await cluster.get() is None
        assert await cluster.settled("cluster.accepted") == []


async def test_clusters_over_the_namespace_quota_are_rejected_and_a_nats_request_creates_nothing(
    settings: GatewaySettings, cluster: Cluster, kube_api: client.ApiClient, js: JetStreamContext
) -> None:
    second = Cluster(kube_api, js, cluster.namespace, "team-b")
    third = Cluster(kube_api, js, cluster.namespace, "team-c")
    async with running(wired(settings.model_copy(update={"max_clusters_per_namespace": 1}))):
        await cluster.apply()
        await cluster.next("cluster.accepted")
        await Publisher(js).publish(request_on_nats(second, "over-quota-1"))
        await third.apply()

        quota = f"namespace {cluster.namespace!r} already has 1 clusters; quota maxClustersPerNamespace is 1"
        [refused] = await second.next("cluster.rejected")
        assert refused.data.problems == [f"data.namespace: {quota}"]
        assert await second.get() is None
        [rejected] = await third.next("cluster.rejected")
        assert rejected.data.problems == [f"metadata.namespace: {quota}"]
        assert await third.settled("cluster.accepted") == []
        assert await second.events("cluster.accepted") == []


async def test_growing_beyond_the_namespace_gpu_quota_is_rejected_and_the_pipeline_keeps_the_accepted_spec(
    settings: GatewaySettings, cluster: Cluster
) -> None:
    async with running(wired(settings.model_copy(update={"max_gpus_per_namespace": 2}))):
        await cluster.apply(spec_document(gpus=2))
        await cluster.next("cluster.accepted")
        await cluster.patch({"spec": spec_document(gpus=3)})

        [rejected] = await cluster.next("cluster.rejected")
        assert rejected.data.problems == [
            f"spec.nodes: the cluster asks for 3 GPUs and namespace {cluster.namespace!r} holds 0 in other clusters; "
            "quota maxGpusPerNamespace is 2"
        ]
        assert await cluster.settled("cluster.updated") == []
        await cluster.patch({"spec": spec_document(gpus=1)})
        [shrunk] = await cluster.next("cluster.updated")
        assert shrunk.data.spec.gpus_total() == 1


async def test_an_object_too_large_for_an_event_is_rejected_and_the_gateway_carries_on(
    gateway: Service, cluster: Cluster, kube_api: client.ApiClient, js: JetStreamContext
) -> None:
    # Within the apiserver's 256 KiB of annotations, beyond what an event may carry.
    await cluster.apply(annotations={"padding": "x" * 250_000})
    [rejected] = await cluster.next("cluster.rejected")
    [problem] = rejected.data.problems
    assert problem.startswith("(document): spec, labels and annotations are 250") and problem.endswith(
        "bytes; at most 245760 fit in an event"
    )
    assert await cluster.events("cluster.requested") == []
    neighbour = Cluster(kube_api, js, cluster.namespace, "team-b")
    await neighbour.apply()
    await neighbour.next("cluster.accepted")

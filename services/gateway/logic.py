"""The gateway's decisions, free of I/O: what to publish for an observed Vk8s object given what
the gateway already told the pipeline about it (its ledger record), and how to answer a
`cluster.requested`. Time is passed in.

Event ids derive from the object (uid, generation, and for later changes their number), never
from the path that led to them: an object seen by the watch and the same cluster requested on NATS
both end in `accepted-<uid>-<generation>`, and the broker keeps only the first (Nats-Msg-Id
dedupe). Changes after acceptance are numbered in the ledger record (`updated-<uid>-<generation>-
<number>`), so each change has an id of its own (pause, resume, pause again: three ids) while a
retry of the same change, before the record says it went out, publishes the same id again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, SecretStr

from libs.api.images import ImagePolicy
from libs.api.models import API_VERSION, GROUP, KIND, ReconcileStatus, SecretKeyRef, Vk8sSpec
from libs.api.validation import ROOT_PATH, Problem, validate_document
from libs.events import MAX_EVENT_BYTES, Envelope, Reason, cluster_id_of
from libs.events.catalog import (
    ClusterAccepted,
    ClusterDeleteRequested,
    ClusterRejected,
    ClusterRequested,
    ClusterUpdated,
)
from libs.kube import FINALIZER
from libs.kube.vnodes import CLUSTER_UID_LABEL, cluster_labels

PAUSED_ANNOTATION = "vk8s-resource-stopped"
REQUEST_ID_ANNOTATION = f"{GROUP}/request-id"
# kubectl's copy of the applied manifest may hold a plain password, and it changes with every apply.
UNPUBLISHED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})


def _timestamp(value: str | datetime | None) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def metadata_hash(labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    canonical = json.dumps([labels, annotations], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Observed:
    """What the gateway reads from one Vk8s object."""

    uid: str
    namespace: str
    name: str
    generation: int
    labels: dict[str, str]
    annotations: dict[str, str]
    """Without UNPUBLISHED_ANNOTATIONS."""
    finalizers: tuple[str, ...]
    deleting: bool
    spec: Any
    """As stored; validation parses it."""
    created: datetime | None = None

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Observed:
        metadata = obj["metadata"]
        annotations = metadata.get("annotations") or {}
        return cls(
            uid=metadata["uid"],
            namespace=metadata.get("namespace") or "default",
            name=metadata["name"],
            generation=int(metadata.get("generation") or 1),
            labels=dict(metadata.get("labels") or {}),
            annotations={k: v for k, v in annotations.items() if k not in UNPUBLISHED_ANNOTATIONS},
            finalizers=tuple(metadata.get("finalizers") or ()),
            deleting=metadata.get("deletionTimestamp") is not None,
            spec=obj.get("spec"),
            created=_timestamp(metadata.get("creationTimestamp")),
        )

    @property
    def cluster_id(self) -> str:
        return cluster_id_of(self.namespace, self.name)

    @property
    def has_finalizer(self) -> bool:
        return FINALIZER in self.finalizers

    @property
    def paused(self) -> bool:
        return PAUSED_ANNOTATION in self.annotations

    @property
    def metadata_hash(self) -> str:
        return metadata_hash(self.labels, self.annotations)

    @property
    def change_key(self) -> tuple[Any, ...]:
        """What a reconcile depends on: two observations with the same key (a status update in
        between) need no second try."""
        return (self.generation, self.metadata_hash, self.deleting, self.finalizers)

    def document(self) -> dict[str, Any]:
        """The object as validation reads it; status is left out, it is not part of the request."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "annotations": self.annotations,
            },
            "spec": self.spec,
        }


@dataclass(frozen=True)
class Assessment:
    """A spec checked by libs.api: publishable when `spec` is set, else `errors` say why not."""

    spec: Vk8sSpec | None
    """Redacted: a plain password is replaced by the reference to the gateway's Secret."""
    errors: tuple[str, ...] = ()
    warnings: tuple[Problem, ...] = ()
    password: SecretStr | None = None
    """A plain password to store in that Secret before publishing the spec."""


# What an event adds around an object's spec, labels and annotations (envelope, names, uid), with room.
_EVENT_OVERHEAD_BYTES = 16 * 1024


def assess(document: Mapping[str, Any], host_cidrs: Sequence[str], image_policy: ImagePolicy | None) -> Assessment:
    metadata = document.get("metadata") or {}
    published = [document.get("spec"), metadata.get("labels"), metadata.get("annotations")]
    size, limit = len(json.dumps(published, separators=(",", ":"))), MAX_EVENT_BYTES - _EVENT_OVERHEAD_BYTES
    if size > limit:
        problem = f"(document): spec, labels and annotations are {size} bytes; at most {limit} fit in an event"
        return Assessment(None, (problem,))
    result = validate_document(document, host_cidrs=host_cidrs, image_policy=image_policy)
    warnings = tuple(result.warnings)
    if result.vk8s is None:
        return Assessment(None, tuple(str(problem) for problem in result.errors), warnings)
    spec = result.vk8s.spec
    password = spec.kubeflow.password if spec.kubeflow is not None else None
    return Assessment(spec.redacted(result.vk8s.metadata.name), (), warnings, password)


class ClusterRecord(BaseModel):
    """What the gateway told the pipeline about one Vk8s object: one key (the uid) of its KV bucket."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uid: str
    cluster_id: str
    announced_generation: int | None = None
    """Generation last published (requested, accepted, updated or rejected)."""
    announced_hash: str | None = None
    """Labels and annotations published with it."""
    accepted_generation: int | None = None
    """The pipeline has the cluster at this generation (cluster.accepted or cluster.updated)."""
    announced_changes: int = 0
    """cluster.updated and cluster.rejected published for the object so far; numbers the next one."""
    accepting_generation: int | None = None
    """cluster.accepted is being published at this generation (written before publishing it)."""
    delete_requested: bool = False
    delete_requested_at: AwareDatetime | None = None
    """When cluster.delete.requested was last published (None: by a version that did not record it)."""
    delete_requests: int = 0
    """How many times it was published: a resync of a stuck deletion gets an id of its own."""

    @property
    def accepted(self) -> bool:
        return self.accepted_generation is not None

    @property
    def maybe_accepted(self) -> bool:
        """Accepted, or about to be: a crash between publishing cluster.accepted and recording it
        leaves only `accepting_generation`, and the pipeline may have the cluster all the same."""
        return self.accepted or self.accepting_generation is not None

    def delete_due(self, now: datetime, resync: timedelta) -> bool:
        """Whether to publish cluster.delete.requested: never yet, or long enough ago that a stage
        gave up or the chain stalled (the object still holds its finalizer, so the chain did not end)."""
        if not self.delete_requested:
            return True
        return self.delete_requested_at is None or now - self.delete_requested_at >= resync



def record_published(
    record: ClusterRecord | None, observed: Observed, *, accepted: bool, change: int | None = None
) -> ClusterRecord:
    """The record after publishing for `observed` (as change number `change`, if numbered). A
    compare-and-set retry applies it again to a newer record, so it never moves a generation or
    the change count backwards."""
    record = record or ClusterRecord(uid=observed.uid, cluster_id=observed.cluster_id)
    update: dict[str, Any] = {}
    if record.announced_generation is None or observed.generation >= record.announced_generation:
        update.update(announced_generation=observed.generation, announced_hash=observed.metadata_hash)
    if accepted and (record.accepted_generation or 0) < observed.generation:
        update.update(accepted_generation=observed.generation)
    if change is not None and change > record.announced_changes:
        update.update(announced_changes=change)
    return record.model_copy(update=update)


def record_accepting(record: ClusterRecord | None, observed: Observed) -> ClusterRecord:
    """The record before publishing cluster.accepted for `observed`."""
    record = record or ClusterRecord(uid=observed.uid, cluster_id=observed.cluster_id)
    return record.model_copy(update={"accepting_generation": max(record.accepting_generation or 0, observed.generation)})


def record_delete_requested(record: ClusterRecord, now: datetime) -> ClusterRecord:
    update = {"delete_requested": True, "delete_requested_at": now, "delete_requests": record.delete_requests + 1}
    return record.model_copy(update=update)


# --- quotas ----------------------------------------------------------------------------------------


class Holdings(BaseModel):
    """What one namespace's quota holds: GPUs per cluster uid, from the moment the gateway accepts
    a cluster until the pipeline has deleted it. One KV key per namespace, written compare-and-set,
    so two acceptances in one namespace cannot both take the last of a limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpus: dict[str, int] = {}


def take_quota(
    holdings: Holdings,
    namespace: str,
    uid: str,
    spec: Vk8sSpec,
    *,
    max_clusters: int | None,
    max_gpus: int | None,
) -> Holdings | tuple[Problem, ...]:
    """The holdings once `uid` holds what `spec` asks for, or why the quotas refuse it (paths of
    the Vk8s document). Only growth is checked, so a cluster already held never loses what it has
    when a limit is lowered."""
    others = {held: gpus for held, gpus in holdings.gpus.items() if held != uid}
    problems = []
    if uid not in holdings.gpus and max_clusters is not None and len(others) + 1 > max_clusters:
        problems.append(
            Problem(
                "metadata.namespace",
                f"namespace {namespace!r} already has {len(others)} clusters; "
                f"quota maxClustersPerNamespace is {max_clusters}",
            )
        )
    gpus, held_gpus = spec.gpus_total(), sum(others.values())
    if gpus > holdings.gpus.get(uid, 0) and max_gpus is not None and held_gpus + gpus > max_gpus:
        problems.append(
            Problem(
                "spec.nodes",
                f"the cluster asks for {gpus} GPUs and namespace {namespace!r} holds {held_gpus} in other "
                f"clusters; quota maxGpusPerNamespace is {max_gpus}",
            )
        )
    return tuple(problems) if problems else Holdings(gpus={**holdings.gpus, uid: gpus})


def release_quota(holdings: Holdings | None, uid: str) -> Holdings | None:
    """The holdings without `uid`; None once nothing is held (the key is deleted)."""
    if holdings is None:
        return None
    left = {held: gpus for held, gpus in holdings.gpus.items() if held != uid}
    return Holdings(gpus=left) if left else None


def rejected_over_quota(update: ObjectPlan, observed: Observed, problems: Sequence[str], now: datetime) -> ObjectPlan:
    """The `update` of an accepted cluster that the quotas refuse, as a rejection of the same change:
    the pipeline keeps the accepted generation."""
    change = update.change or 1
    return ObjectPlan(Action.REJECT, object_rejected_event(observed, problems, change, now), update.assessment, change)


# --- the watch: an observed object, or one that is gone -------------------------------------------


class Action(StrEnum):
    NONE = "none"
    REQUEST = "request"
    """Publish cluster.requested: the pipeline does not know the cluster yet."""
    UPDATE = "update"
    """Publish cluster.updated: spec, labels or annotations changed since the last publication."""
    REJECT = "reject"
    """Publish cluster.rejected: this generation cannot be provisioned as written."""
    DELETE = "delete"
    """Publish cluster.delete.requested: free what the pipeline holds for it."""
    RELEASE = "release"
    """Being deleted, never provisioned: drop the finalizer and the record, publish nothing."""
    FORGET = "forget"
    """Gone, never provisioned: drop the record."""
    AWAIT_REQUEST = "await_request"
    """Made for a request on NATS that is still being answered: look again at `recheck_at`."""


@dataclass(frozen=True)
class ObjectPlan:
    action: Action
    event: Envelope[Any] | None = None
    assessment: Assessment | None = None
    change: int | None = None
    """The number of the change `event` announces (cluster.updated, cluster.rejected)."""
    recheck_at: datetime | None = None


def plan_for_object(
    observed: Observed,
    record: ClusterRecord | None,
    *,
    host_cidrs: Sequence[str],
    now: datetime,
    delete_resync: timedelta,
    image_policy: ImagePolicy | None = None,
    nats_request_grace: timedelta = timedelta(seconds=30),
) -> ObjectPlan:
    if observed.deleting:
        if record is not None and record.maybe_accepted:
            if not record.delete_due(now, delete_resync):
                return ObjectPlan(Action.NONE)
            return ObjectPlan(Action.DELETE, delete_requested_event(record, now))
        if observed.has_finalizer or record is not None:
            return ObjectPlan(Action.RELEASE)
        return ObjectPlan(Action.NONE)
    if record is not None and record.announced_generation == observed.generation:
        # Before acceptance, label changes ride along: cluster.accepted is built from the live object.
        if not record.accepted or record.announced_hash == observed.metadata_hash:
            return ObjectPlan(Action.NONE)
    assessment = assess(observed.document(), host_cidrs, image_policy)
    change = (record.announced_changes if record is not None else 0) + 1
    if assessment.spec is None:
        rejected = object_rejected_event(observed, assessment.errors, change, now)
        return ObjectPlan(Action.REJECT, rejected, assessment, change)
    if record is None or not record.accepted:
        # The request that made the object accepts it (a crash there is redelivered): asking too
        # would only publish a second cluster.requested. Asked once that request had its time.
        if record is None and REQUEST_ID_ANNOTATION in observed.annotations and observed.created is not None:
            if now < (recheck_at := observed.created + nats_request_grace):
                return ObjectPlan(Action.AWAIT_REQUEST, recheck_at=recheck_at)
        return ObjectPlan(Action.REQUEST, requested_event(observed, assessment.spec, now), assessment)
    return ObjectPlan(Action.UPDATE, updated_event(observed, assessment.spec, change, now), assessment, change)


def plan_for_gone(record: ClusterRecord, *, now: datetime, delete_resync: timedelta) -> ObjectPlan:
    """The object of `record` no longer exists (deleted, or deleted and created again)."""
    if not record.maybe_accepted:
        return ObjectPlan(Action.FORGET)
    if not record.delete_due(now, delete_resync):
        return ObjectPlan(Action.NONE)
    return ObjectPlan(Action.DELETE, delete_requested_event(record, now))


# --- cluster.requested -----------------------------------------------------------------------------


# Where a cluster.requested came from: built from a Vk8s object, or sent on NATS by a user.
REQUEST_SOURCES = ("kubernetes", "nats")


class Verdict(StrEnum):
    ACCEPT = "accepted"
    ALREADY_ACCEPTED = "already_accepted"
    REJECT = "rejected"
    DROP = "dropped"
    """Stale: the object it was about is gone; nothing to provision, nobody to answer."""


@dataclass(frozen=True)
class RequestPlan:
    verdict: Verdict
    event: Envelope[Any] | None = None
    assessment: Assessment | None = None
    reason: str = ""


def request_problems(
    request: ClusterRequested,
    host_cidrs: Sequence[str],
    namespace: str | None = None,
    image_policy: ImagePolicy | None = None,
) -> tuple[str, ...]:
    """What is wrong with a request, before any object is made for it: libs.api's findings, or a
    namespace this gateway does not serve (`namespace`; None serves all). Paths name the fields of
    the request (`data.spec...`), as the consumer wrapper's rejections of the same request do."""
    if namespace is not None and request.namespace != namespace:
        return (f"data.namespace: this gateway serves namespace {namespace!r} only, not {request.namespace!r}",)
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": request.name,
            "namespace": request.namespace,
            "labels": request.labels,
            "annotations": request.annotations,
        },
        "spec": request.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    errors = validate_document(document, host_cidrs=host_cidrs, image_policy=image_policy).errors
    return as_request_problems(errors)


def as_request_problems(problems: Iterable[Problem]) -> tuple[str, ...]:
    """Problems of a Vk8s document, named by the fields of the cluster.requested that carried it."""
    return tuple(str(Problem(_request_path(problem.path), problem.message)) for problem in problems)


def tenant_namespace_problem(namespace: str, labels: Mapping[str, str] | None, reserved: Collection[str]) -> str | None:
    """Why no virtual cluster is made in `namespace` (its labels; None when there is no such
    namespace): one of the host's own (`reserved`), or a cluster's platform namespace. The gateway
    binds the services' tenant roles only in a namespace this finds nothing against."""
    if namespace in reserved:
        return f"namespace {namespace!r} is reserved for the host cluster; virtual clusters are made in tenant namespaces"
    if labels is None:
        return f"namespace {namespace!r} does not exist; create it first"
    if CLUSTER_UID_LABEL in labels:
        return (
            f"namespace {namespace!r} is the platform namespace of a virtual cluster; "
            "virtual clusters are made in tenant namespaces"
        )
    return None


def reference_problems(
    request: ClusterRequested, *, namespace_problem: str | None, secret_keys: set[str] | None
) -> tuple[str, ...]:
    """What a request names that is not there or not for it: its namespace (`namespace_problem`, from
    tenant_namespace_problem), or the Secret (and key) holding the Kubeflow password (`secret_keys`
    is None when that Secret does not exist)."""
    if namespace_problem is not None:
        return (f"data.namespace: {namespace_problem}",)
    reference = password_reference(request)
    if reference is None:
        return ()
    return password_secret_problems(reference, request.namespace, secret_keys, "data.spec")


def password_secret_problems(
    reference: SecretKeyRef, namespace: str, secret_keys: set[str] | None, spec_path: str
) -> tuple[str, ...]:
    """The Kubeflow password's Secret (`secret_keys` None: it does not exist) or key not there,
    named by their field under `spec_path` (`data.spec` in a request, `spec` in an object)."""
    where = f"{spec_path}.kubeflow.passwordSecretRef"
    if secret_keys is None:
        return (
            f"{where}.name: Secret {reference.name!r} does not exist in namespace {namespace!r}; create it "
            f"first, e.g. kubectl -n {namespace} create secret generic {reference.name} "
            f"--from-literal={reference.key}=...",
        )
    if reference.key not in secret_keys:
        return (f"{where}.key: Secret {reference.name!r} has no key {reference.key!r}",)
    return ()


class PasswordSecretMissing(Exception):
    """An applied object names a password Secret (or key) that is not there: it is not requested
    until it is, and says so on its `status.reconcile` (the Secret may simply come later)."""

    reason = Reason.PASSWORD_SECRET_MISSING


def password_reference(request: ClusterRequested) -> SecretKeyRef | None:
    kubeflow = request.spec.kubeflow
    return kubeflow.password_secret_ref if kubeflow is not None else None


def _request_path(path: str) -> str:
    """A Vk8s document's field path as the field of the cluster.requested that carried it."""
    if path == ROOT_PATH:
        return "data"
    return f"data.{path.removeprefix('metadata.')}"


def intake_problems(subject_namespace: str, document: Any) -> tuple[str, ...]:
    """What keeps a requester's ask (sent on vk8s.requests.<subject_namespace>) out of the stream:
    only its scope, which NATS lets a requester use within its namespaces: the namespace it asks in
    (`data.namespace`, default `default`, and that of `clusterId`) must be the subject's, and `uid`
    is the gateway's own. Everything else is the gateway's validation, answered with
    cluster.rejected once the request is in the stream."""
    if not isinstance(document, Mapping):
        return ("(document): must be a JSON object (the event envelope)",)
    problems = []
    if not isinstance(document.get("id"), str) or not document["id"]:
        problems.append("id: required; the request is stored under it (Nats-Msg-Id)")
    raw_data = document.get("data")
    data: Mapping[str, Any] = raw_data if isinstance(raw_data, Mapping) else {}
    namespace = data.get("namespace", "default")
    if namespace != subject_namespace:
        problems.append(
            f"data.namespace: {namespace!r} is not the namespace this request was sent for "
            f"({subject_namespace!r}); a requester asks in the namespaces of its scope only"
        )
    cluster_id = document.get("clusterId")
    if isinstance(cluster_id, str) and cluster_id.split("/", 1)[0] != subject_namespace:
        problems.append(f"clusterId: {cluster_id!r} is not in namespace {subject_namespace!r}, the one asked in")
    if data.get("uid") is not None:
        problems.append("data.uid: set only by the gateway for Vk8s objects applied with kubectl; leave it out")
    return tuple(problems)


def object_for_request(cause: Envelope[ClusterRequested]) -> dict[str, Any]:
    """The Vk8s object a request from NATS creates, so that kubectl shows the cluster."""
    request = cause.data
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": request.name,
            "namespace": request.namespace,
            "labels": dict(request.labels),
            "annotations": {**request.annotations, REQUEST_ID_ANNOTATION: cause.id},
            # Set at creation: the pipeline may start before the watch sees the object.
            "finalizers": [FINALIZER],
        },
        "spec": request.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def judge_request(
    cause: Envelope[ClusterRequested],
    live: Observed | None,
    record: ClusterRecord | None,
    *,
    host_cidrs: Sequence[str],
    now: datetime,
    image_policy: ImagePolicy | None = None,
) -> RequestPlan:
    """Answers a request by the live object it names (created for it, or found): cluster.accepted
    is always built from that object, whichever path the request took."""
    request = cause.data
    if live is None:
        return RequestPlan(Verdict.DROP, reason=f"Vk8s {cause.cluster_id} no longer exists")
    if request.uid is not None and request.uid != live.uid:
        reason = (
            f"Vk8s {live.cluster_id} is uid {live.uid}, not {request.uid}: it was deleted and created again; "
            "the new object is handled on its own"
        )
        return reject_request(cause, [reason], now)
    if live.deleting:
        if request.uid is not None:
            return RequestPlan(Verdict.DROP, reason=f"Vk8s {live.cluster_id} is being deleted")
        reason = f"Vk8s {live.cluster_id} is being deleted; send the request again once it is gone"
        return reject_request(cause, [reason], now)
    assessment = assess(live.document(), host_cidrs, image_policy)
    if request.uid is None and live.annotations.get(REQUEST_ID_ANNOTATION) != cause.id:
        # The object exists already: the same cluster from the other entry point, or a conflict.
        if assessment.spec != request.spec:
            reason = (
                f"Vk8s {live.cluster_id} exists already (uid {live.uid}) with a different spec; "
                "change it with kubectl, or delete it first"
            )
            return reject_request(cause, [reason], now)
    if assessment.spec is None:
        return reject_request(cause, list(assessment.errors), now)
    if record is not None and record.accepted:
        return RequestPlan(Verdict.ALREADY_ACCEPTED, reason=f"accepted at generation {record.accepted_generation}")
    return RequestPlan(Verdict.ACCEPT, accepted_event(cause, live, assessment.spec, now), assessment)


def reject_request(cause: Envelope[ClusterRequested], problems: Sequence[str], now: datetime) -> RequestPlan:
    event = cause.follow(ClusterRejected(request_id=cause.id, problems=list(problems)), now=now)
    return RequestPlan(Verdict.REJECT, event, reason="; ".join(problems))


# --- events ----------------------------------------------------------------------------------------


def requested_event(observed: Observed, spec: Vk8sSpec, now: datetime) -> Envelope[ClusterRequested]:
    payload = ClusterRequested(**_cluster_fields(observed, spec), uid=observed.uid, generation=observed.generation)
    return Envelope.new(
        payload, cluster_id=observed.cluster_id, now=now, event_id=f"requested-{observed.uid}-{observed.generation}"
    )


def accepted_event(
    cause: Envelope[ClusterRequested], live: Observed, spec: Vk8sSpec, now: datetime
) -> Envelope[ClusterAccepted]:
    payload = ClusterAccepted(**_cluster_fields(live, spec), uid=live.uid, generation=live.generation)
    # Follows the request, so the pipeline's events carry the requester's correlation id; the id
    # itself is the object's, equal for every path (see the module docstring).
    followed = cause.follow(payload, now=now)
    return followed.model_copy(update={"id": f"accepted-{live.uid}-{live.generation}"})


def updated_event(observed: Observed, spec: Vk8sSpec, change: int, now: datetime) -> Envelope[ClusterUpdated]:
    payload = ClusterUpdated(
        **_cluster_fields(observed, spec), uid=observed.uid, generation=observed.generation, paused=observed.paused
    )
    event_id = f"updated-{observed.uid}-{observed.generation}-{change}"
    return Envelope.new(payload, cluster_id=observed.cluster_id, now=now, event_id=event_id)


def object_rejected_event(
    observed: Observed, problems: Sequence[str], change: int, now: datetime
) -> Envelope[ClusterRejected]:
    event_id = f"rejected-{observed.uid}-{observed.generation}-{change}"
    payload = ClusterRejected(problems=list(problems))
    return Envelope.new(payload, cluster_id=observed.cluster_id, now=now, event_id=event_id)


def delete_requested_event(record: ClusterRecord, now: datetime) -> Envelope[ClusterDeleteRequested]:
    """The first request is `delete-requested-<uid>`; each resync `delete-requested-<uid>-resync-<n>`,
    so the broker does not drop it as a duplicate and every stage runs its (idempotent) part again."""
    payload = ClusterDeleteRequested(uid=record.uid)
    event_id = f"delete-requested-{record.uid}"
    if record.delete_requests:
        event_id += f"-resync-{record.delete_requests}"
    return Envelope.new(payload, cluster_id=record.cluster_id, now=now, event_id=event_id)


def _cluster_fields(observed: Observed, spec: Vk8sSpec) -> dict[str, Any]:
    return {
        "name": observed.name,
        "namespace": observed.namespace,
        "spec": spec,
        "labels": observed.labels,
        "annotations": observed.annotations,
    }


# --- failures: one object's trouble is its own ---------------------------------------------------


def foreign_platform_namespace(
    labels: Mapping[str, str] | None, tenant_namespace: str, cluster: str, uid: str
) -> str:
    """Why a namespace bearing the platform namespace's name is not that cluster's (each label of
    `cluster_labels` it lacks or has otherwise, e.g. `vk8s.skt.co.kr/cluster-uid=<other>`); "" when it
    is. The gateway deletes, or binds the services' roles in, only a namespace that is."""
    found = labels or {}
    wanted = cluster_labels(tenant_namespace, cluster, uid)
    return ", ".join(
        f"{key}={found[key]}" if key in found else f"{key} missing"
        for key, value in wanted.items()
        if found.get(key) != value
    )


def reconcile_status(reason: str, message: str, attempts: int, now: datetime, delay_s: float) -> dict[str, Any]:
    """`status.reconcile` of an object whose change failed `attempts` times in a row."""
    status = ReconcileStatus(
        reason=reason,
        message=message,
        attempts=attempts,
        last_attempt_time=now,
        next_attempt_time=now + timedelta(seconds=delay_s),
    )
    return status.model_dump(mode="json", by_alias=True)

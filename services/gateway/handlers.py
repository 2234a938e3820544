"""What the gateway listens to: `cluster.requested` and `cluster.deleted` on NATS, and Vk8s objects
in Kubernetes. Each handler reads, asks logic.py what to do, and does it.

Publication order is "publish, then record in the ledger": a crash in between republishes the same
event id on the retry, which the broker drops, instead of recording something never published.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from libs.api.models import Vk8sSpec
from libs.api.validation import Problem
from libs.backoff import backoff_delay
from libs.events import Envelope, Publisher, Publishes, Reason, TransientError, declare, subscriber, utc_now
from libs.events.catalog import (
    ClusterAccepted,
    ClusterDeleted,
    ClusterDeleteRequested,
    ClusterRejected,
    ClusterRequested,
    ClusterUpdated,
)
from libs.kube import WatchEvent
from services.gateway import logic
from services.gateway.adapters.kubernetes import ClusterObjects, Object, describe_failure
from services.gateway.adapters.ledger import Ledger
from services.gateway.adapters.metrics import GatewayMetrics
from services.gateway.logic import Action, Assessment, ClusterRecord, Holdings, ObjectPlan, Observed, Verdict
from services.gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)



@dataclass(frozen=True)
class _Failure:
    attempts: int
    change_key: tuple[Any, ...] | None
    """Of the object the failed try was for (None: it was gone)."""


class GatewayHandlers:
    def __init__(
        self,
        *,
        objects: ClusterObjects,
        ledger: Ledger,
        publisher: Publisher,
        metrics: GatewayMetrics,
        settings: GatewaySettings,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._objects = objects
        self._ledger = ledger
        self._publisher = publisher
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        # Objects whose last try failed, and their next try.
        self._failures: dict[str, _Failure] = {}
        self._retries: dict[str, asyncio.Task[None]] = {}
        self._delete_resync = timedelta(seconds=settings.delete_resync_s)
        self._nats_request_grace = timedelta(seconds=settings.nats_request_grace_s)

    # --- NATS --------------------------------------------------------------------------------------

    @subscriber(ClusterRequested, emits=(ClusterRejected,))
    async def on_cluster_requested(self, cause: Envelope[ClusterRequested]) -> list[Envelope[Any]]:
        """Makes sure the Vk8s object exists, then accepts it (once per uid) or rejects the request."""
        request = cause.data
        from_object, from_nats = logic.REQUEST_SOURCES
        source = from_nats if request.uid is None else from_object
        obj: Object | None
        if request.uid is None:
            body = logic.object_for_request(cause)
            problems = logic.request_problems(
                request, self._settings.host_cidrs, self._settings.namespace, self._settings.image_policy
            ) or await self._reference_problems(request)
            if not problems:
                # Over quota, nothing is created (taken below, against the object made or found).
                existing = await self._objects.get(request.namespace, request.name)
                uid = existing["metadata"]["uid"] if existing is not None else None
                refused = await self._quota_problems(request.namespace, uid, request.spec, take=False)
                problems = logic.as_request_problems(refused)
            if problems:
                plan = logic.reject_request(cause, problems, now=self._clock())
                return self._answered(source, plan)
            obj, created = await self._objects.create_or_get(body)
            if created:
                log.info("Created Vk8s for request", uid=obj["metadata"]["uid"])
        else:
            obj = await self._objects.get(request.namespace, request.name)
        if obj is not None and not obj["metadata"].get("deletionTimestamp"):
            # Accepted implies the finalizer, so the cluster's cleanup cannot be skipped.
            ensured, added = await self._objects.ensure_finalizer(obj)
            if added:
                self._metrics.finalizer_changes.labels("added").inc()
            obj = ensured or await self._objects.get(request.namespace, request.name)
        live = Observed.of(obj) if obj is not None else None
        record = await self._ledger.get(live.uid) if live is not None else None
        plan = logic.judge_request(
            cause,
            live,
            record,
            host_cidrs=self._settings.host_cidrs,
            now=self._clock(),
            image_policy=self._settings.image_policy,
        )
        if plan.verdict is Verdict.ACCEPT:
            assert live is not None and plan.assessment is not None and plan.assessment.spec is not None
            if refused := await self._quota_problems(live.namespace, live.uid, plan.assessment.spec, take=True):
                plan = logic.reject_request(cause, [str(problem) for problem in refused], now=self._clock())
        if plan.verdict is Verdict.ACCEPT:
            assert obj is not None and live is not None and plan.event is not None
            await self._store_password(obj, plan.assessment)
            # Recorded first: a crash right after publishing must not let a quick delete of the
            # object skip the delete chain (the pipeline would provision an orphan). That chain
            # also deletes the platform namespace, so it is made only after this record.
            await self._ledger.change(live.uid, lambda r: logic.record_accepting(r, live))
            # Where the pipeline puts the cluster's vNodes and credentials: there before anyone is told.
            if await self._objects.ensure_platform_namespace(obj) is None:
                raise TransientError(
                    "the platform namespace of an earlier cluster of this name is still being deleted",
                    reason=Reason.PREVIOUS_CLUSTER_DELETING,
                )
            await self._announce(plan.event, live, accepted=True, resync=False)
        return self._answered(source, plan)

    async def _reference_problems(self, request: ClusterRequested) -> tuple[str, ...]:
        """Checked before the object is made: a request naming what is not there (or a namespace that is
        not a tenant's) is rejected at once."""
        namespace_problem = await self._objects.prepare_tenant_namespace(request.namespace)
        reference = logic.password_reference(request)
        secret_keys = (
            await self._objects.secret_keys(request.namespace, reference.name)
            if namespace_problem is None and reference is not None
            else None
        )
        return logic.reference_problems(request, namespace_problem=namespace_problem, secret_keys=secret_keys)

    def _answered(self, source: str, plan: logic.RequestPlan) -> list[Envelope[Any]]:
        self._metrics.requests.labels(source, plan.verdict.value).inc()
        log.info("Answered request", source=source, verdict=plan.verdict.value, reason=plan.reason or None)
        # cluster.accepted went out through _announce; a rejection goes out through the consumer.
        return [plan.event] if plan.verdict is Verdict.REJECT and plan.event is not None else []

    @subscriber(ClusterDeleted)
    async def on_cluster_deleted(self, cause: Envelope[ClusterDeleted]) -> list[Envelope[Any]]:
        """The pipeline freed everything: let the apiserver finish deleting the object."""
        uid = cause.data.uid
        namespace, name = cause.cluster_id.split("/", 1)
        if not self._serves(namespace):
            return []
        obj = await self._objects.get(namespace, name)
        if obj is not None and obj["metadata"]["uid"] == uid and not obj["metadata"].get("deletionTimestamp"):
            log.warning("Keeping finalizer: cluster.deleted names a Vk8s that is not being deleted", uid=uid)
            return []
        # Released only once everything of the cluster is gone, its platform namespace included.
        if (left := await self._objects.delete_platform_namespace(namespace, name, uid)) is not None:
            raise TransientError(f"waiting for namespace {left} to go", reason=Reason.DELETING)
        if obj is not None and obj["metadata"]["uid"] == uid:
            if await self._objects.remove_finalizer(obj):
                self._metrics.finalizer_changes.labels("removed").inc()
        await self._ledger.forget(uid)
        await self._release_quota(namespace, uid)
        log.info("Released deleted cluster", uid=uid)
        return []

    # --- Kubernetes --------------------------------------------------------------------------------

    async def watch(self) -> None:
        """Reconciles every Vk8s on each (re)list and on every change; after a list, records whose
        object was not in it are settled too (deleted while no watch ran). An object whose change
        fails is tried again on its own, with backoff and the reason on its status: the others go on."""
        listed: set[str] = set()
        events = self._objects.watch(self._settings.namespace, timeout_s=self._settings.watch_timeout_s)
        try:
            async for event in events:
                if event.object is not None:
                    await self._on_watch_event(event, listed)
                if event.synced:
                    await self._sweep(listed)
                    listed = set()
        finally:
            for retry in self._retries.values():
                retry.cancel()

    async def _on_watch_event(self, event: WatchEvent, listed: set[str]) -> None:
        metadata = event.object["metadata"]
        uid = metadata["uid"]
        self._metrics.objects_observed.labels(event.type).inc()
        resync = event.type == "SYNC"
        if resync:
            listed.add(uid)
        cluster_id = f"{metadata.get('namespace')}/{metadata['name']}"
        with structlog.contextvars.bound_contextvars(cluster_id=cluster_id, uid=uid, watch_event=event.type):
            if event.type == "DELETED":
                await self._isolated(uid, lambda _: self._gone(uid, resync=False))
            elif self._waiting_to_retry(uid, event.object):
                log.debug("Change of a failing object left to its retry")
            else:
                obj = event.object
                await self._isolated(uid, lambda refresh: self._reconcile(obj, resync, refresh), obj)

    def _waiting_to_retry(self, uid: str, obj: Object) -> bool:
        """Whether a retry is pending for the same state of the object (only its status changed, as
        by the report of the failure itself): no immediate try, or each report would cause the next."""
        failure, retry = self._failures.get(uid), self._retries.get(uid)
        pending = retry is not None and not retry.done()
        return pending and failure is not None and failure.change_key == Observed.of(obj).change_key

    async def _isolated(self, uid: str, attempt: Callable[[bool], Awaitable[None]], obj: Object | None = None) -> None:
        """Tries `attempt` (re-reading the object on retries); a failure schedules this object's
        next try and reports it on its status instead of stopping or blocking the others."""
        pending = self._retries.pop(uid, None)
        if pending is not None and pending is not asyncio.current_task():
            pending.cancel()  # this try supersedes it
        failure = self._failures.get(uid)
        try:
            await attempt(failure is not None)
        except Exception as error:  # noqa: BLE001 - one object's trouble must not stop the gateway
            self._metrics.reconcile_errors.inc()
            reason, message = describe_failure(error)
            attempts = (failure.attempts if failure is not None else 0) + 1
            delay = backoff_delay(attempts, self._settings.reconcile_retry_s, self._settings.reconcile_retry_max_s)
            log.warning(
                "Reconciling failed; trying this object again later",
                reason=reason,
                error=message,
                attempt=attempts,
                retry_in_s=delay,
            )
            change_key = Observed.of(obj).change_key if obj is not None else None
            self._failures[uid] = _Failure(attempts, change_key)
            status = logic.reconcile_status(reason, message, attempts, self._clock(), delay) if obj is not None else None
            self._retries[uid] = asyncio.create_task(self._retry(uid, attempt, obj, status, delay))
            return
        self._failures.pop(uid, None)
        if obj is not None and (failure is not None or (obj.get("status") or {}).get("reconcile")):
            # Best effort, like the report: a failure here is not the object's.
            with contextlib.suppress(Exception):
                await self._objects.report_reconcile(obj, None)
            log.info("Reconciled after failing", attempts=failure.attempts if failure is not None else None)

    async def _retry(
        self,
        uid: str,
        attempt: Callable[[bool], Awaitable[None]],
        obj: Object | None,
        status: dict[str, Any] | None,
        delay: float,
    ) -> None:
        if obj is not None and status is not None:
            try:
                await self._objects.report_reconcile(obj, status)
            except Exception as error:  # noqa: BLE001 - the report is best effort, the retry is not
                log.warning("Reporting the reconcile status failed", error=str(error))
        await asyncio.sleep(delay)
        await self._isolated(uid, attempt, obj)

    def _recheck(self, uid: str, obj: Object, at: datetime) -> None:
        """Reconciles `obj` again at `at` (re-read then), unless a change of it comes first."""
        delay = max(0.0, (at - self._clock()).total_seconds())

        async def later() -> None:
            await asyncio.sleep(delay)
            await self._isolated(uid, lambda _: self._reconcile(obj, False, True), obj)

        self._retries[uid] = asyncio.create_task(later())

    async def _reconcile(self, obj: Object, resync: bool, refresh: bool) -> None:
        metadata = obj["metadata"]
        if refresh:
            current = await self._objects.get(metadata["namespace"], metadata["name"])
            if current is None or current["metadata"]["uid"] != metadata["uid"]:
                await self._gone(metadata["uid"], resync=resync)
                return
            obj = current
        if problem := await self._objects.prepare_tenant_namespace(metadata["namespace"]):
            # Nothing is done there, nor can be said there: the services have no rights in it.
            log.warning("Not serving Vk8s", problem=problem)
            return
        if not obj["metadata"].get("deletionTimestamp"):
            ensured, added = await self._objects.ensure_finalizer(obj)
            if ensured is None:
                return  # gone or being deleted: that change has a watch event of its own
            if added:
                self._metrics.finalizer_changes.labels("added").inc()
            obj = ensured
        observed = Observed.of(obj)
        record = await self._ledger.get(observed.uid)
        plan = logic.plan_for_object(
            observed,
            record,
            host_cidrs=self._settings.host_cidrs,
            now=self._clock(),
            delete_resync=self._delete_resync,
            image_policy=self._settings.image_policy,
            nats_request_grace=self._nats_request_grace,
        )
        if plan.action is Action.UPDATE and plan.assessment is not None and plan.assessment.spec is not None:
            if refused := await self._quota_problems(
                observed.namespace, observed.uid, plan.assessment.spec, take=True
            ):
                problems = [str(problem) for problem in refused]
                plan = logic.rejected_over_quota(plan, observed, problems, self._clock())
        if plan.action in (Action.REQUEST, Action.UPDATE):
            await self._require_password_secret(observed, plan.assessment)
        await self._carry_out(plan, observed.uid, resync, obj)

    async def _require_password_secret(self, observed: Observed, assessment: Assessment | None) -> None:
        """Raises PasswordSecretMissing while the object's passwordSecretRef names what is not there;
        a plain password is checked by storing it instead."""
        spec = assessment.spec if assessment is not None else None
        reference = spec.kubeflow.password_secret_ref if spec is not None and spec.kubeflow is not None else None
        if reference is None or (assessment is not None and assessment.password is not None):
            return
        keys = await self._objects.secret_keys(observed.namespace, reference.name)
        if problems := logic.password_secret_problems(reference, observed.namespace, keys, "spec"):
            raise logic.PasswordSecretMissing("; ".join(problems))

    async def _gone(self, uid: str, *, resync: bool) -> None:
        record = await self._ledger.get(uid)
        if record is not None:
            plan = logic.plan_for_gone(record, now=self._clock(), delete_resync=self._delete_resync)
            namespace = record.cluster_id.split("/", 1)[0]
            await self._carry_out(plan, uid, resync, namespace=namespace)

    async def _sweep(self, listed: set[str]) -> None:
        try:
            records = await self._ledger.records()
        except Exception as error:  # noqa: BLE001 - the next relist sweeps again
            log.warning("Reading the ledger for the sweep failed; sweeping after the next list", error=str(error))
            return
        for record in records:
            namespace = record.cluster_id.split("/", 1)[0]
            if record.uid in listed or not self._serves(namespace):
                continue
            if logic.plan_for_gone(record, now=self._clock(), delete_resync=self._delete_resync).action is Action.NONE:
                continue
            with structlog.contextvars.bound_contextvars(cluster_id=record.cluster_id, uid=record.uid):
                await self._isolated(record.uid, functools.partial(self._swept, record))

    async def _swept(self, record: ClusterRecord, _retry: bool) -> None:
        namespace, name = record.cluster_id.split("/", 1)
        current = await self._objects.get(namespace, name)
        if current is not None and current["metadata"]["uid"] == record.uid:
            return  # created after the list was taken
        await self._gone(record.uid, resync=True)

    async def _carry_out(
        self, plan: ObjectPlan, uid: str, resync: bool, obj: Object | None = None, *, namespace: str | None = None
    ) -> None:
        """`obj` is the object the plan was made for; None when it is gone (then `namespace` is its)."""
        match plan.action:
            case Action.REQUEST | Action.UPDATE | Action.REJECT:
                assert obj is not None and plan.event is not None
                await self._report_warnings(obj, plan.assessment)
                if plan.action is Action.REJECT:
                    self._metrics.objects_rejected.inc()
                else:
                    await self._store_password(obj, plan.assessment)
                if plan.action is Action.UPDATE:
                    metadata = obj["metadata"]
                    await self._objects.ensure_platform_bindings(metadata["namespace"], metadata["name"], uid)
                accepted = plan.action is Action.UPDATE
                await self._announce(plan.event, Observed.of(obj), accepted=accepted, resync=resync, change=plan.change)
            case Action.DELETE:
                assert plan.event is not None
                # The stages delete the cluster's objects with their rights in the platform namespace.
                tenant_namespace, name = plan.event.cluster_id.split("/", 1)
                await self._objects.ensure_platform_bindings(tenant_namespace, name, uid)
                await self._publish(plan.event, resync)
                now = self._clock()
                await self._ledger.change(uid, lambda r: None if r is None else logic.record_delete_requested(r, now))
            case Action.RELEASE:
                assert obj is not None
                # Never accepted, so nothing of the pipeline is in it; a namespace made by an
                # acceptance that lost the race with this release goes too (not waited for).
                metadata = obj["metadata"]
                await self._objects.delete_platform_namespace(metadata["namespace"], metadata["name"], uid)
                if await self._objects.remove_finalizer(obj):
                    self._metrics.finalizer_changes.labels("removed").inc()
                await self._ledger.forget(uid)
                await self._release_quota(obj["metadata"]["namespace"], uid)
                log.info("Released Vk8s that was never provisioned")
            case Action.FORGET:
                await self._ledger.forget(uid)
                if namespace is not None:
                    await self._release_quota(namespace, uid)
            case Action.AWAIT_REQUEST:
                assert obj is not None and plan.recheck_at is not None
                self._recheck(uid, obj, plan.recheck_at)
            case Action.NONE:
                pass

    # --- shared ------------------------------------------------------------------------------------

    async def _quota_problems(
        self, namespace: str, uid: str | None, spec: Vk8sSpec, *, take: bool
    ) -> tuple[Problem, ...]:
        """Why the namespace's quotas refuse `spec` for `uid` (None: a cluster not made yet); with
        `take`, what it asks for is held for it (compare-and-set), unless refused."""
        problems: tuple[Problem, ...] = ()

        def taken(current: Holdings | None) -> Holdings | None:
            nonlocal problems
            outcome = logic.take_quota(
                current or Holdings(),
                namespace,
                uid or "",
                spec,
                max_clusters=self._settings.max_clusters_per_namespace,
                max_gpus=self._settings.max_gpus_per_namespace,
            )
            problems = outcome if isinstance(outcome, tuple) else ()
            return outcome if take and isinstance(outcome, Holdings) else current

        await self._ledger.change_holdings(namespace, taken)
        return problems

    async def _release_quota(self, namespace: str, uid: str) -> None:
        await self._ledger.change_holdings(namespace, lambda current: logic.release_quota(current, uid))

    def _serves(self, namespace: str) -> bool:
        return self._settings.namespace is None or namespace == self._settings.namespace

    async def _announce(
        self, event: Envelope[Any], observed: Observed, *, accepted: bool, resync: bool, change: int | None = None
    ) -> None:
        await self._publish(event, resync)

        def published(record: ClusterRecord | None) -> ClusterRecord:
            return logic.record_published(record, observed, accepted=accepted, change=change)

        await self._ledger.change(observed.uid, published)

    async def _publish(self, event: Envelope[Any], resync: bool) -> None:
        ack = await self._publisher.publish(event)
        if resync:
            self._metrics.resync_published.labels(event.type).inc()
        if ack.duplicate:
            # Ids are per object and change, so the stream has this very event: a retry after a
            # crash before the ledger write. Said, because a duplicate of anything else would be lost.
            log.warning("Event was stored before under this id; not stored again", **event.log_context(), resync=resync)
        else:
            log.info("Published event", **event.log_context(), resync=resync)

    async def _store_password(self, obj: Object, assessment: Assessment | None) -> None:
        if assessment is None or assessment.password is None:
            return
        if await self._objects.store_password(obj, assessment.password):
            self._metrics.plain_passwords.inc()
            log.warning(
                "Moved plain Kubeflow password into a Secret; plain passwords are deprecated, use passwordSecretRef",
                cluster_id=f"{obj['metadata']['namespace']}/{obj['metadata']['name']}",
            )

    async def _report_warnings(self, obj: Object, assessment: Assessment | None) -> None:
        for warning in assessment.warnings if assessment is not None else ():
            reason = Reason.PLAIN_PASSWORD_DEPRECATED if warning.path.endswith("kubeflow.password") else Reason.SPEC_WARNING
            await self._objects.warn(obj, reason, str(warning), now=self._clock())


# The Vk8s watch announces objects; the cluster.requested handler publishes its cluster.accepted
# itself, between two ledger writes (see on_cluster_requested).
ANNOUNCER = Publishes.of(
    "the Vk8s watch and the acceptance of requests",
    ClusterRequested,
    ClusterAccepted,
    ClusterRejected,
    ClusterUpdated,
    ClusterDeleteRequested,
)
# Puts the requests asked on vk8s.requests.<namespace> into the stream, as sent.
REQUEST_INTAKE = Publishes.of("the request intake", ClusterRequested)
TOPOLOGY = declare(
    "gateway",
    GatewayHandlers,
    publishers=(ANNOUNCER, REQUEST_INTAKE),
    kv_bucket=GatewaySettings.model_fields["kv_bucket"].default,
)

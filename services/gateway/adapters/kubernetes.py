"""Vk8s objects and their cleanup finalizer, the Secret holding a plain Kubeflow password, the
warning Events users see in `kubectl describe`, and the namespaces the services act in (tenant and
platform ones, with the services' RoleBindings). Every write is idempotent: deterministic names,
create-or-get, and resourceVersion preconditions on patches."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import datetime
from typing import Any, cast

import structlog
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from pydantic import SecretStr

from libs.api.models import CONDITION_REASON_PATTERN, KUBEFLOW_PASSWORD_KEY, kubeflow_user_secret_name
from libs.events import Reason
from libs.kube import (
    FINALIZER,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    WatchEvent,
    conflict,
    create_or_get,
    metadata_of,
    name_of,
    not_found,
    read_vk8s,
    watch_objects,
)
from libs.kube.objects import API_VERSION, owner_reference
from libs.kube.vnodes import RETAINED_VOLUMES_ANNOTATION, platform_namespace_body
from services.gateway import logic
from services.gateway.settings import ServiceBinding

log = structlog.get_logger(__name__)

COMPONENT = "vk8s-gateway"
MERGE_PATCH = "application/merge-patch+json"
TENANT_RECHECK_S = 300.0
BINDING_WAIT_TRIES, BINDING_WAIT_S = 50, 0.1
Object = dict[str, Any]


class ContendedObject(Exception):
    """An object that kept changing under a compare-and-set patch."""


class ClusterObjects:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        platform_bindings: tuple[ServiceBinding, ...] = (),
        tenant_bindings: tuple[ServiceBinding, ...] = (),
        reserved_namespaces: Collection[str] = (),
        cas_attempts: int = 5,
    ):
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._rbac = client.RbacAuthorizationV1Api(api)
        self._authorization = client.AuthorizationV1Api(api)
        self._platform_bindings = platform_bindings
        self._tenant_bindings = tenant_bindings
        self._reserved_namespaces = frozenset(reserved_namespaces)
        self._cas_attempts = cas_attempts
        # Tenant namespaces found ready, until when (monotonic) that is taken as still true.
        self._tenant_ready_until: dict[str, float] = {}

    def watch(self, namespace: str | None, *, timeout_s: int) -> AsyncIterator[WatchEvent]:
        """Every Vk8s (of `namespace`, else of all): a list (SYNC events), then changes; again after
        each timeout."""
        if namespace is None:
            return watch_objects(self._custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, timeout_s=timeout_s)
        return watch_objects(
            self._custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, timeout_s=timeout_s
        )

    async def get(self, namespace: str, name: str) -> Object | None:
        return await read_vk8s(self._custom.api_client, namespace, name)

    async def create_or_get(self, body: Object) -> tuple[Object, bool]:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]

        async def create() -> Object:
            return cast(Object, await self._custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body))

        async def get() -> Object:
            return cast(Object, await self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))

        return await create_or_get(create, get)

    async def prepare_tenant_namespace(self, namespace: str) -> str | None:
        """Why no virtual cluster is made in `namespace` (logic.tenant_namespace_problem), else None once
        the services' tenant roles are bound there (create-or-get). A namespace found ready is looked at
        again after TENANT_RECHECK_S, so a binding deleted by hand comes back."""
        if self._tenant_ready_until.get(namespace, 0.0) > time.monotonic():
            return None
        try:
            labels = metadata_of(await self._core.read_namespace(namespace)).labels or {}
        except ApiException as error:
            if not not_found(error):
                raise
            labels = None
        if problem := logic.tenant_namespace_problem(namespace, labels, self._reserved_namespaces):
            return problem
        made = [await self._ensure_role_binding(namespace, binding) for binding in self._tenant_bindings]
        if any(made):
            await self._until_bound(namespace)
        self._tenant_ready_until[namespace] = time.monotonic() + TENANT_RECHECK_S
        return None

    async def _until_bound(self, namespace: str) -> None:
        """Waits (a bounded while) until the apiserver's authorizer applies the bindings just made: the
        gateway acts in the namespace right after. A late one only costs a retry of what was refused."""
        review = client.V1SelfSubjectAccessReview.model_validate(
            {"spec": {"resourceAttributes": {"namespace": namespace, "verb": "patch", "group": GROUP, "resource": PLURAL}}}
        )
        for _ in range(BINDING_WAIT_TRIES):
            answer = await self._authorization.create_self_subject_access_review(review)
            if answer.status is not None and answer.status.allowed:
                return
            await asyncio.sleep(BINDING_WAIT_S)
        log.warning("Tenant roles bound, but not applied yet", tenant_namespace=namespace)

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The keys of a Secret, None when there is no such Secret."""
        try:
            secret = await self._core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if not_found(error):
                return None
            raise
        return set(secret.data or {}) | set(secret.string_data or {})

    async def ensure_platform_namespace(self, vk8s: Object) -> str | None:
        """Creates the cluster's platform namespace or finds it, with the services' RoleBindings in it;
        returns its name, or None while the namespace of an earlier cluster of that name (another uid)
        is still there, being deleted."""
        metadata = vk8s["metadata"]
        body = platform_namespace_body(metadata["namespace"], metadata["name"], metadata["uid"])
        name: str = body["metadata"]["name"]
        found, created = await create_or_get(
            lambda: self._core.create_namespace(cast(client.V1Namespace, body)), lambda: self._core.read_namespace(name)
        )
        if created:
            log.info("Created platform namespace", platform_namespace=name)
        if not await self._bind_platform_roles(found, metadata["namespace"], metadata["name"], metadata["uid"]):
            return None
        return name

    async def ensure_platform_bindings(self, namespace: str, name: str, uid: str) -> None:
        """The services' RoleBindings in the cluster's platform namespace when it exists, is the cluster's
        and is not being deleted: a namespace made before the gateway bound roles (an upgrade) gets them
        when its cluster next changes or is deleted, as the stages then need them."""
        platform_namespace: str = platform_namespace_body(namespace, name, uid)["metadata"]["name"]
        try:
            found = await self._core.read_namespace(platform_namespace)
        except ApiException as error:
            if not_found(error):
                return
            raise
        if metadata_of(found).deletion_timestamp is None:
            await self._bind_platform_roles(found, namespace, name, uid)

    async def _bind_platform_roles(self, found: client.V1Namespace, namespace: str, name: str, uid: str) -> bool:
        """The services' platform roles bound in `found` if it is the cluster's platform namespace (its labels
        say so); says whether it is."""
        metadata = metadata_of(found)
        if logic.foreign_platform_namespace(metadata.labels, namespace, name, uid):
            return False
        for binding in self._platform_bindings:
            await self._ensure_role_binding(name_of(found), binding)
        return True

    async def _ensure_role_binding(self, namespace: str, binding: ServiceBinding) -> bool:
        """The service's ClusterRole bound in the namespace (named after the role; create-or-get); says
        whether this call made the binding."""
        body = client.V1RoleBinding.model_validate(
            {
                "metadata": {"name": binding.role, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": COMPONENT}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": binding.role},
                "subjects": [{"kind": "ServiceAccount", "name": binding.service_account, "namespace": binding.namespace}],
            }
        )
        _, created = await create_or_get(
            lambda: self._rbac.create_namespaced_role_binding(namespace, body),
            lambda: self._rbac.read_namespaced_role_binding(binding.role, namespace),
        )
        return created

    async def delete_platform_namespace(self, namespace: str, name: str, uid: str) -> str | None:
        """Deletes the cluster's platform namespace (only one labelled with this uid). Returns what
        is left: None when it is gone, or kept because the vnode stage retained volumes in it;
        else its name (being deleted: its objects go first)."""
        body = platform_namespace_body(namespace, name, uid)
        platform_namespace: str = body["metadata"]["name"]
        try:
            metadata = metadata_of(await self._core.read_namespace(platform_namespace))
            # RBAC lets the gateway delete any namespace: only the one labelled as this cluster's goes.
            if mismatch := logic.foreign_platform_namespace(metadata.labels, namespace, name, uid):
                log.warning("Not deleting namespace: not this cluster's platform namespace",
                            platform_namespace=platform_namespace, mismatch=mismatch)  # fmt: skip
                return None
            if (metadata.annotations or {}).get(RETAINED_VOLUMES_ANNOTATION) == "true":
                log.info("Keeping platform namespace: it holds retained volumes", platform_namespace=platform_namespace)
                return None
            if metadata.deletion_timestamp is None:
                options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=metadata.uid))
                await self._core.delete_namespace(platform_namespace, body=options)
                log.info("Deleting platform namespace", platform_namespace=platform_namespace)
        except ApiException as error:
            if not_found(error):
                return None
            raise
        return platform_namespace

    async def ensure_finalizer(self, obj: Object) -> tuple[Object | None, bool]:
        """The object carrying the cleanup finalizer, and whether this call added it; None when the
        object is gone or being deleted (the apiserver refuses new finalizers then)."""
        return await self._set_finalizer(obj, present=True)

    async def remove_finalizer(self, obj: Object) -> bool:
        """Drops the cleanup finalizer and keeps every other one; the apiserver then finishes a
        deletion. Says whether this call removed it."""
        return (await self._set_finalizer(obj, present=False))[1]

    async def _set_finalizer(self, obj: Object, *, present: bool) -> tuple[Object | None, bool]:
        for _ in range(self._cas_attempts):
            metadata = obj["metadata"]
            finalizers = list(metadata.get("finalizers") or [])
            if (FINALIZER in finalizers) == present:
                return obj, False
            if present and metadata.get("deletionTimestamp"):
                return None, False
            finalizers = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
            namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
            # uid and resourceVersion are preconditions: a merge patch replaces the whole list, so it
            # must be computed from the version it replaces.
            patch = {"metadata": {"finalizers": finalizers, "uid": uid, "resourceVersion": metadata["resourceVersion"]}}
            try:
                patched = await self._custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, patch, _content_type=MERGE_PATCH
                )
            except ApiException as error:
                if not_found(error):
                    return None, False
                if not conflict(error):
                    raise
            else:
                return cast(Object, patched), True
            current = await self.get(namespace, name)
            if current is None or current["metadata"]["uid"] != uid:
                return None, False
            obj = current
        raise ContendedObject(f"Vk8s {obj['metadata']['namespace']}/{obj['metadata']['name']} kept changing")

    async def store_password(self, owner: Object, password: SecretStr) -> bool:
        """Puts a plain Kubeflow password into Secret `<name>-kubeflow-user` (key `password`), owned by
        the Vk8s so it goes with it. Says whether anything changed."""
        metadata = owner["metadata"]
        namespace, name = metadata["namespace"], kubeflow_user_secret_name(metadata["name"])
        encoded = base64.b64encode(password.get_secret_value().encode()).decode()
        reference = owner_reference(owner)
        body = client.V1Secret.model_validate(
            {
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/managed-by": COMPONENT},
                    "ownerReferences": [reference],
                },
                "type": "Opaque",
                "data": {KUBEFLOW_PASSWORD_KEY: encoded},
            }
        )
        secret, created = await create_or_get(
            lambda: self._core.create_namespaced_secret(namespace, body),
            lambda: self._core.read_namespaced_secret(name, namespace),
        )
        if created:
            return True
        for _ in range(self._cas_attempts):
            owned = any(ref.uid == reference["uid"] for ref in metadata_of(secret).owner_references or [])
            if (secret.data or {}).get(KUBEFLOW_PASSWORD_KEY) == encoded and owned:
                return False
            # A new password, or a Secret left by an earlier Vk8s of the same name (the garbage
            # collector would delete it with its old owner).
            patch = {
                "metadata": {"resourceVersion": metadata_of(secret).resource_version, "ownerReferences": [reference]},
                "data": {KUBEFLOW_PASSWORD_KEY: encoded},
            }
            try:
                await self._core.patch_namespaced_secret(name, namespace, patch, _content_type=MERGE_PATCH)
                return True
            except ApiException as error:
                if not conflict(error):
                    raise
            secret = await self._core.read_namespaced_secret(name, namespace)
        raise ContendedObject(f"Secret {namespace}/{name} kept changing")

    async def report_reconcile(self, obj: Object, status: Mapping[str, Any] | None) -> None:
        """Sets `status.reconcile` (None: removes it) with a merge patch of that one field through the
        status subresource, beside what the projector writes. Best effort: a failure is logged."""
        metadata = obj["metadata"]
        try:
            await self._custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                metadata["namespace"],
                PLURAL,
                metadata["name"],
                {"status": {"reconcile": status}},
                _content_type=MERGE_PATCH,
            )
        except ApiException as error:
            if not not_found(error):
                log.warning("Reporting the reconcile status failed", status=error.status, error=str(error.reason))

    async def warn(self, obj: Object, reason: str, message: str, *, now: datetime) -> None:
        """A Warning Event on the Vk8s; one per generation and message (a deterministic name, so a
        repeat is a 409). Best effort, as Events are: a failure is logged, not raised."""
        metadata = obj["metadata"]
        namespace, uid = metadata["namespace"], metadata["uid"]
        digest = hashlib.sha256(f"{uid}/{metadata.get('generation')}/{reason}/{message}".encode()).hexdigest()[:16]
        body = client.CoreV1Event.model_validate(
            {
                "metadata": {"name": f"{metadata['name']}.{digest}", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": metadata["name"],
                    "namespace": namespace,
                    "uid": uid,
                    "resourceVersion": metadata.get("resourceVersion"),
                },
                "reason": reason,
                "message": message,
                "type": "Warning",
                "source": {"component": COMPONENT},
                "reportingComponent": COMPONENT,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
        )
        try:
            await self._core.create_namespaced_event(namespace, body)
        except ApiException as error:
            if not conflict(error):
                log.warning("Creating event failed", reason=reason, status=error.status, error=str(error.reason))


def _status(error: ApiException) -> dict[str, Any]:
    """The Status object an apiserver error carries; {} when its body is not one."""
    try:
        status = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def describe_failure(error: Exception) -> tuple[str, str]:
    """A reason (a condition reason: CamelCase) and a one-line message for a failed reconcile; for
    an API error, the apiserver's own reason and message."""
    if isinstance(error, ApiException):
        status = _status(error)
        reason = str(status.get("reason") or "") or (Reason.API_SERVER_ERROR if (error.status or 500) >= 500 else Reason.API_ERROR)
        message = f"HTTP {error.status}: {status.get('message') or error.reason}"
    else:
        # Ours carry a Reason; any other error is named by its type.
        known = getattr(error, "reason", None)
        reason = known if isinstance(known, Reason) else type(error).__name__
        message = str(error) or type(error).__name__
    if not re.match(CONDITION_REASON_PATTERN, reason):
        reason = Reason.RECONCILE_FAILED
    return reason, " ".join(message.split())[:2000]

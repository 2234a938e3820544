"""The `Vk8s` custom resource (`vk8s.skt.co.kr/v1alpha1`): spec and status as frozen pydantic models.

The models hold what the CRD schema holds (types, enums, patterns, ranges) so an object that
parses here is one the apiserver accepts; rules that span fields live in `validation.py`.
Dump with `model_dump(mode="json", by_alias=True, exclude_none=True)` for Kubernetes.

Compatibility with the original gs-optops samples: `kubernetes`/`kubeflow` may sit under the
master node instead of at spec level; they are moved to spec level while parsing.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainValidator,
    SecretStr,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from libs.api.quantity import QUANTITY_PATTERN, QuantityError, parse_quantity, to_millis, to_units
from libs.api.versions import (
    KUBEFLOW_VERSION_PATTERN,
    KUBERNETES_VERSION_PATTERN,
    CompatibilityMatrix,
    NodeImageCatalog,
    default_matrix,
    kubernetes_minor,
    kubernetes_minor_from_image,
)

GROUP = "vk8s.skt.co.kr"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Vk8s"

GPU_RESOURCE = "nvidia.com/gpu"
# Kubernetes' extended resources (nvidia.com/gpu, any vendor's): a domain-prefixed name outside
# kubernetes.io. They are counted in whole devices, written as digits: the schema and validation share this.
EXTENDED_RESOURCE_PATTERN = r"^(?!.*kubernetes\.io/)[^/]+/"
WHOLE_COUNT_PATTERN = r"^[0-9]+$"
_WHOLE_COUNT_SCHEMA: dict[str, JsonValue] = {
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": WHOLE_COUNT_PATTERN}]
}
DEFAULT_POD_NETWORK_CIDR = "90.244.0.0/16"
DEFAULT_SERVICE_CIDR = "90.96.0.0/12"
KUBEFLOW_UI_PORT_NAME = "kubeflow"
KUBEFLOW_PASSWORD_KEY = "password"
PHASE_HISTORY_LIMIT = 50
"""Oldest phase records are dropped beyond this, keeping the object far below etcd's size limit."""

# Patterns are RE2-compatible (no look-around) because the apiserver evaluates them in Go.
DNS1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PORT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
EMAIL_PATTERN = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

PATTERN_HELP = {
    DNS1123_LABEL_PATTERN: "a DNS-1123 label: lower-case letters, digits and '-', "
    "starting and ending with a letter or digit (e.g. gpu-worker-1)",
    EMAIL_PATTERN: "an email address such as user@example.com",
    KUBEFLOW_VERSION_PATTERN: "a Kubeflow release tag vX.Y.Z such as v1.9.1",
    KUBERNETES_VERSION_PATTERN: "a Kubernetes version such as 1.29, v1.29 or v1.29.2",
    QUANTITY_PATTERN: "a quantity such as 500m, 2, 1.5, 16Gi, 1e3",
    CONDITION_TYPE_PATTERN: "a CamelCase condition type such as Ready, optionally prefixed by a domain/",
    CONDITION_REASON_PATTERN: "a CamelCase reason such as WaitingForNodes",
}
"""What each pattern means, for messages that say what is allowed instead of quoting a regex."""

NODE_LEVEL_BLOCKS = ("kubernetes", "kubeflow")
"""Spec blocks the original samples put under the master node."""

DnsLabel = Annotated[str, StringConstraints(max_length=63, pattern=DNS1123_LABEL_PATTERN)]
# A StatefulSet's pods carry `controller-revision-hash: <name>-<10 chars>`, a label value (<= 63).
VNodeName = Annotated[str, StringConstraints(max_length=52, pattern=DNS1123_LABEL_PATTERN)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
# Strict numbers: the apiserver refuses "30000" or true where an integer is due, so the models do too.
# vNodes per cluster: each is a privileged pod on a shared host; the CRD and validation refuse more.
MAX_VNODES = 64
PortNumber = Annotated[StrictInt, Field(ge=1, le=65535)]
Count = Annotated[StrictInt, Field(ge=0)]


def _quantity(value: Any) -> str | int:
    try:
        parse_quantity(value)
    except QuantityError as exc:
        raise PydanticCustomError("quantity", str(exc)) from None
    # parse_quantity accepted it: a quantity string or a whole number.
    quantity: str | int = value
    return quantity


Quantity = Annotated[
    str | int,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes quantity kept in the form it was written (`"16Gi"`, `2`)."""


def _is_port_name(value: str) -> bool:
    """An IANA service name: at most 15 lower-case letters, digits and inner '-', one letter at least, no '--'."""
    return (
        re.fullmatch(PORT_NAME_PATTERN, value) is not None
        and len(value) <= 15
        and "--" not in value
        and any("a" <= char <= "z" for char in value)
    )


def _target_port(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            raise PydanticCustomError("target_port", f"port number {value} is out of range; allowed: 1-65535")
        return value
    if isinstance(value, str) and _is_port_name(value):
        return value
    raise PydanticCustomError(
        "target_port",
        f"{value!r} is neither a port number 1-65535 nor a port name (an IANA service name: at most 15 "
        "lower-case letters, digits and '-', at least one letter, no '--')",
    )


TargetPort = Annotated[
    int | str,
    PlainValidator(_target_port),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 1,
            "maximum": 65535,
            "maxLength": 15,
            "pattern": PORT_NAME_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A container port: a number 1-65535 or an IANA service name (`http`, `ssh`)."""


@functools.lru_cache(maxsize=1024)
def _strict_network(value: str) -> None:
    ipaddress.ip_network(value, strict=True)


def _cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("cidr", "expected a CIDR string such as 10.244.0.0/16")
    try:
        _strict_network(value)
    except ValueError as exc:
        hint = ""
        with contextlib.suppress(ValueError):
            hint = f"; did you mean {ipaddress.ip_network(value, strict=False)}?"
        raise PydanticCustomError("cidr", f"{value!r} is not a network CIDR ({exc}){hint}") from None
    return value


Cidr = Annotated[str, PlainValidator(_cidr), WithJsonSchema({"type": "string", "format": "cidr"})]
"""An IPv4 or IPv6 network in CIDR notation with no host bits set."""


class ApiModel(BaseModel):
    """Base of spec and status parts: immutable, camelCase on the wire, unknown fields refused.

    Inputs are kept out of `str(ValidationError)` so a mistyped password never reaches a log.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        hide_input_in_errors=True,
    )


class ObjectMeta(BaseModel):
    """Kubernetes object metadata; fields other than the typed ones are kept as they come."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="allow", hide_input_in_errors=True
    )

    name: DnsLabel
    namespace: DnsLabel | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None


class NodeRole(StrEnum):
    MASTER = "master"
    WORKER = "worker"


class Toleration(ApiModel):
    """A Kubernetes toleration copied onto the vNode pod."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: StrictInt | None = None


class Resources(ApiModel):
    """Requests and limits of a vNode pod; `nvidia.com/gpu` asks for GPUs."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, json_schema_extra={"patternProperties": {EXTENDED_RESOURCE_PATTERN: _WHOLE_COUNT_SCHEMA}}
    )
    """Guaranteed amounts (cpu, memory, nvidia.com/gpu, ...); default to the limits."""
    limits: dict[str, Quantity] = Field(
        default_factory=dict, json_schema_extra={"patternProperties": {EXTENDED_RESOURCE_PATTERN: _WHOLE_COUNT_SCHEMA}}
    )
    """Caps; the inner node advertises these as its capacity."""


class NodeSpec(ApiModel):
    """One vNode: a StatefulSet `<name>` whose pod `<name>-0` runs a kubelet of its own."""

    name: VNodeName
    """StatefulSet name; unique within the cluster."""
    image: NonEmptyStr | None = None
    """Node image; its tag gives the Kubernetes version (`kink:v1.20`). Defaults to the catalog image."""
    role: NodeRole
    """`master` (exactly one, listed first) or `worker`."""
    resources: Resources = Field(default_factory=Resources)
    tolerations: tuple[Toleration, ...] = ()
    gpu_model: NonEmptyStr | None = None
    """GPU model this node needs (e.g. NVIDIA-A100-SXM4-80GB); overrides spec.placement.gpuModel."""

    def quantity(self, resource: str) -> Decimal | None:
        """The request for `resource`, falling back to its limit (Kubernetes defaults requests so)."""
        value = self.resources.requests.get(resource, self.resources.limits.get(resource))
        return None if value is None else parse_quantity(value)

    def gpus(self) -> int:
        """GPUs this vNode gets (requests and limits are equal once validated)."""
        value = self.resources.limits.get(GPU_RESOURCE, self.resources.requests.get(GPU_RESOURCE))
        return 0 if value is None else to_units(parse_quantity(value))

    def cpu_millis(self) -> int:
        quantity = self.quantity("cpu")
        return 0 if quantity is None else to_millis(quantity)

    def memory_bytes(self) -> int:
        quantity = self.quantity("memory")
        return 0 if quantity is None else to_units(quantity)


class KubernetesConfig(ApiModel):
    """The inner cluster's Kubernetes: version and networks (must not overlap the host's)."""

    version: Annotated[str, StringConstraints(pattern=KUBERNETES_VERSION_PATTERN)] | None = None
    """Kubernetes version (1.29 or v1.29.2); when omitted it is read from the node image tag."""
    pod_network_cidr: Cidr = DEFAULT_POD_NETWORK_CIDR
    """Pod network of the inner cluster (kubeadm --pod-network-cidr); default 90.244.0.0/16."""
    service_cidr: Cidr = DEFAULT_SERVICE_CIDR
    """Service network of the inner cluster (kubeadm --service-cidr); default 90.96.0.0/12."""


class SecretKeyRef(ApiModel):
    """A key of a Secret in the Vk8s object's namespace."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = KUBEFLOW_PASSWORD_KEY


class KubeflowConfig(ApiModel):
    """Kubeflow to install in the inner cluster; no block means no Kubeflow."""

    version: Annotated[str, StringConstraints(pattern=KUBEFLOW_VERSION_PATTERN)] | None = None
    """Kubeflow release (vX.Y.Z); when omitted the newest one compatible with the Kubernetes version."""
    email: Annotated[str, StringConstraints(max_length=254, pattern=EMAIL_PATTERN)]
    """Login of the Kubeflow user."""
    password_secret_ref: SecretKeyRef | None = None
    """Secret holding the user's password (preferred over `password`)."""
    password: SecretStr | None = None
    """Plain-text password, accepted for compatibility; moved into a Secret on creation."""


class ServicePort(ApiModel):
    """A port of the cluster's NodePort Service; the one named `kubeflow` serves the Kubeflow UI."""

    name: DnsLabel | None = None
    """Required when more than one port is listed; `kubeflow` marks the Kubeflow UI."""
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None
    app_protocol: NonEmptyStr | None = None
    port: PortNumber
    """Port of the Service."""
    target_port: TargetPort | None = None
    """Port on the master vNode: a number or a port name; defaults to `port`."""
    node_port: Annotated[StrictInt, Field(ge=30000, le=32767)] | None = None
    """Port on every host node (30000-32767); assigned by Kubernetes when omitted."""


class Placement(ApiModel):
    """Where the scheduler may put the vNodes."""

    gpu_model: NonEmptyStr | None = None
    """GPU model every GPU vNode needs unless the node sets its own."""
    spread_zones: StrictBool = False
    """Put vNodes in different topology zones where possible."""


def kubeflow_user_secret_name(cluster_name: str) -> str:
    """The Secret the gateway creates for a plain-text Kubeflow password."""
    return f"{cluster_name}-kubeflow-user"


def admin_kubeconfig_secret_name(cluster_name: str) -> str:
    """The Secret bootstrap creates (owned by the Vk8s) with the inner cluster's admin kubeconfig."""
    return f"{cluster_name}-kubeconfig"


class Vk8sSpec(ApiModel):
    """The cluster a user asks for."""

    nodes: tuple[NodeSpec, ...] = Field(
        min_length=1,
        max_length=MAX_VNODES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """vNodes, master first."""
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    kubeflow: KubeflowConfig | None = None
    ports: tuple[ServicePort, ...] = ()
    """Ports exposed by a NodePort Service."""
    access_pod_image: NonEmptyStr | None = None
    """Image of the SSH/kubectl access pod."""
    access_pod_port: PortNumber | None = None
    """SSH port of the access pod."""
    placement: Placement | None = None

    @model_validator(mode="before")
    @classmethod
    def _lift_node_blocks(cls, data: Any) -> Any:
        """Moves `kubernetes`/`kubeflow` written under the master node (gs-optops samples) to spec level."""
        if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), (list, tuple)):
            return data
        lifted = dict(data)
        nodes = []
        for index, node in enumerate(data["nodes"]):
            blocks = [block for block in NODE_LEVEL_BLOCKS if isinstance(node, Mapping) and block in node]
            if blocks:
                if node.get("role") != NodeRole.MASTER:
                    raise PydanticCustomError(
                        "misplaced_block",
                        "nodes[{index}] is not the master node; {blocks} may only be set at spec level "
                        "or under the master node",
                        {"index": index, "blocks": " and ".join(blocks)},
                    )
                node = dict(node)
                for block in blocks:
                    if block in lifted:
                        raise PydanticCustomError(
                            "duplicate_block",
                            "{block} is set both at spec level and under nodes[{index}]; keep one "
                            "(spec level is preferred)",
                            {"block": block, "index": index},
                        )
                    lifted[block] = node.pop(block)
            nodes.append(node)
        lifted["nodes"] = nodes
        return lifted

    @property
    def master(self) -> NodeSpec | None:
        return next((node for node in self.nodes if node.role is NodeRole.MASTER), None)

    @property
    def workers(self) -> tuple[NodeSpec, ...]:
        return tuple(node for node in self.nodes if node.role is NodeRole.WORKER)

    def kubernetes_version(self) -> str | None:
        """The Kubernetes minor (e.g. "1.20"): spec.kubernetes.version, else the master's image tag."""
        if self.kubernetes.version is not None:
            return kubernetes_minor(self.kubernetes.version)
        for node in (self.master, *self.nodes):
            if node is not None and node.image is not None:
                minor = kubernetes_minor_from_image(node.image)
                if minor is not None:
                    return minor
        return None

    def kubeflow_version(self, matrix: CompatibilityMatrix | None = None) -> str | None:
        """The Kubeflow release to install: as asked, else the newest compatible one; None for no Kubeflow."""
        if self.kubeflow is None:
            return None
        if self.kubeflow.version is not None:
            return self.kubeflow.version
        kubernetes = self.kubernetes_version()
        return None if kubernetes is None else (matrix or default_matrix()).default_kubeflow(kubernetes)

    def gpus_total(self) -> int:
        return sum(node.gpus() for node in self.nodes)

    def image_for(self, node: NodeSpec, catalog: NodeImageCatalog | None = None) -> str:
        """The node's image, or the catalog image of the cluster's Kubernetes version."""
        if node.image is not None:
            return node.image
        kubernetes = self.kubernetes_version()
        if kubernetes is None:
            raise ValueError(f"node {node.name!r} has no image and spec.kubernetes.version is not set")
        return (catalog or NodeImageCatalog()).image_for(kubernetes)

    def kubeflow_ui_port(self) -> ServicePort | None:
        return next((port for port in self.ports if port.name == KUBEFLOW_UI_PORT_NAME), None)

    def redacted(self, cluster_name: str) -> Vk8sSpec:
        """A copy safe to publish in events, logs and the stored object.

        A plain `kubeflow.password` is replaced by a reference to the Secret the gateway creates
        for it (`<cluster>-kubeflow-user`, key `password`).
        """
        if self.kubeflow is None or self.kubeflow.password is None:
            return self
        reference = self.kubeflow.password_secret_ref or SecretKeyRef(
            name=kubeflow_user_secret_name(cluster_name), key=KUBEFLOW_PASSWORD_KEY
        )
        kept = self.kubeflow.model_dump(exclude={"password", "password_secret_ref"}, exclude_unset=True)
        kubeflow = KubeflowConfig.model_validate({**kept, "password_secret_ref": reference})
        return self.model_copy(update={"kubeflow": kubeflow})


class Phase(StrEnum):
    """Lifecycle phase; Waiting, Installing and Running are the original controller's."""

    PENDING = "Pending"
    WAITING = "Waiting"
    SCHEDULING = "Scheduling"
    INSTALLING = "Installing"
    RUNNING = "Running"
    PAUSED = "Paused"
    FAILED = "Failed"
    DELETING = "Deleting"


class PhaseRecord(ApiModel):
    """One entry of the phase history in `status.conditions`."""

    phase: Phase
    message: str = ""
    last_probe_time: AwareDatetime


class VNodeSetupStatus(ApiModel):
    """State of one vNode: its pod phase and whether Kubernetes is set up inside it."""

    status: str = ""
    """Phase of the vNode pod (Pending, Running, ...)."""
    is_kubernetes_setup: Literal["", "Success", "Failed"] = ""
    message: str = ""


class Condition(ApiModel):
    """A Kubernetes-style condition (same shape and limits as metav1.Condition)."""

    type: Annotated[str, StringConstraints(max_length=316, pattern=CONDITION_TYPE_PATTERN)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)]
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    last_transition_time: AwareDatetime
    observed_generation: Count | None = None


class ReconcileStatus(ApiModel):
    """What keeps the gateway from carrying out a change of this object; it retries on its own."""

    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)]
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    attempts: Count
    last_attempt_time: AwareDatetime
    next_attempt_time: AwareDatetime


class Vk8sStatus(ApiModel):
    """Observed state, written by the controllers through the status subresource."""

    phase: Phase | None = None
    message: str | None = None
    """What the cluster is doing or waiting for, in words."""
    conditions: tuple[PhaseRecord, ...] = ()
    """Phase history, one record per change (the original controller's `conditions`)."""
    readiness: tuple[Condition, ...] = Field(
        default=(),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Typed conditions (Ready, NodesReady, KubeflowReady, ...), one per type."""
    vnode_kubernetes_setup_statuses: dict[str, VNodeSetupStatus] = Field(default_factory=dict)
    """Per vNode (pod name): pod state and Kubernetes setup result."""
    observed_generation: Count | None = None
    """metadata.generation the status was computed for."""
    nodes: Count | None = None
    """Number of vNodes (printer column)."""
    gpus: Count | None = None
    """GPUs requested by all vNodes together (printer column)."""
    reconcile: ReconcileStatus | None = None
    """Set by the gateway while a change of the object fails (the reason, its retries); removed once it
    succeeds. The projector never writes it."""

    def with_phase(self, phase: Phase, message: str, at: datetime) -> Vk8sStatus:
        """Sets phase and message, appending to the history only when either changes."""
        if phase == self.phase and message == self.message:
            return self
        record = PhaseRecord(phase=phase, message=message, last_probe_time=at)
        history = (*self.conditions, record)[-PHASE_HISTORY_LIMIT:]
        return self.model_copy(update={"phase": phase, "message": message, "conditions": history})

    def condition(self, type_: str) -> Condition | None:
        return next((condition for condition in self.readiness if condition.type == type_), None)

    def with_condition(self, condition: Condition) -> Vk8sStatus:
        """Adds or replaces the condition of that type; keeps lastTransitionTime if status is unchanged."""
        current = self.condition(condition.type)
        if current is None:
            return self.model_copy(update={"readiness": (*self.readiness, condition)})
        if current.status == condition.status:
            condition = condition.model_copy(update={"last_transition_time": current.last_transition_time})
        # replaced in place so the list order (and a patch of it) stays stable
        readiness = tuple(condition if existing.type == condition.type else existing for existing in self.readiness)
        return self.model_copy(update={"readiness": readiness})


class Vk8s(ApiModel):
    """A virtual Kubernetes cluster with optional Kubeflow."""

    api_version: Literal["vk8s.skt.co.kr/v1alpha1"]
    kind: Literal["Vk8s"]
    metadata: ObjectMeta
    spec: Vk8sSpec
    status: Vk8sStatus | None = None

    @property
    def cluster_id(self) -> str:
        """`<namespace>/<name>`, namespace `default` when unset."""
        return f"{self.metadata.namespace or 'default'}/{self.metadata.name}"

    def redacted(self) -> Vk8s:
        """A copy with no plain-text secret in it (see `Vk8sSpec.redacted`)."""
        return self.model_copy(update={"spec": self.spec.redacted(self.metadata.name)})

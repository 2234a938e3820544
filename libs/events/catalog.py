"""Every event of the pipeline. The subject is the event type; EVENTS is in happy-path order.

Who consumes and emits each is declared by the services' handlers (`libs.events.topology`);
docs/events.md shows the diagram and tables generated from those declarations.
A Kubeflow password never travels in an event: requests carry a Secret reference.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field, field_validator

from libs.api.models import Cidr, Vk8sSpec
from libs.events.envelope import EventModel, Payload
from libs.events.registry import Registry

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# Cluster id of a rejection whose request named no recognisable cluster.
UNKNOWN_CLUSTER_ID = "unknown/unknown"

Labels = dict[str, str]


class _ClusterSpecEvent(Payload):
    name: str = Field(pattern=DNS_LABEL, description="Name of the Vk8s object.")
    namespace: str = Field(default="default", pattern=DNS_LABEL)
    spec: Vk8sSpec
    labels: Labels = Field(default_factory=dict)
    annotations: Labels = Field(default_factory=dict)

    @field_validator("spec")
    @classmethod
    def _no_plain_password(cls, spec: Vk8sSpec) -> Vk8sSpec:
        if spec.kubeflow is not None and spec.kubeflow.password is not None:
            raise ValueError(
                "kubeflow.password is set: plain passwords are not accepted on the event bus; "
                "store it in a Secret and set kubeflow.passwordSecretRef {name, key}"
            )
        return spec


class ClusterRequested(_ClusterSpecEvent):
    """A user (or the gateway, for a Vk8s object) asks for a virtual cluster."""

    subject = "cluster.requested"
    uid: str | None = Field(default=None, description="UID of the Vk8s object, when it came from one.")
    generation: int | None = Field(default=None, ge=1)


class ClusterAccepted(_ClusterSpecEvent):
    """The gateway has the Vk8s object for a request; the pipeline starts from here."""

    subject = "cluster.accepted"
    uid: str = Field(min_length=1)
    generation: int = Field(ge=1)


class ClusterRejected(Payload):
    """A request that cannot be provisioned as sent: what is wrong, field by field."""

    subject = "cluster.rejected"
    request_id: str | None = None
    problems: list[str] = Field(min_length=1)


class ClusterUpdated(_ClusterSpecEvent):
    """The Vk8s object's spec, labels or annotations changed."""

    subject = "cluster.updated"
    uid: str = Field(min_length=1)
    generation: int = Field(ge=1)
    paused: bool = False


class ClusterDeleteRequested(Payload):
    """The Vk8s object is being deleted; the stages free what they hold, in turn."""

    subject = "cluster.delete.requested"
    uid: str = Field(min_length=1)


class VNodePlacement(EventModel):
    vnode: str = Field(pattern=DNS_LABEL)
    role: Literal["master", "worker"]
    host_node: str
    gpus: int = Field(ge=0)
    gpu_model: str | None = None
    zone: str | None = None


class AskedNetworks(EventModel):
    """The pod and service networks a cluster's spec asks for (the API defaults: allocate free ones)."""

    pod_network_cidr: Cidr
    service_cidr: Cidr


class ClusterScheduled(Payload):
    """Every vNode of the cluster has a host node; the reservation holds their resources."""

    subject = "cluster.scheduled"
    generation: int = Field(ge=1)
    placements: list[VNodePlacement] = Field(min_length=1)
    uid: str | None = Field(
        default=None,
        min_length=1,
        description="The Vk8s object's uid the placement is for (absent in events of earlier versions).",
    )
    networks: AskedNetworks | None = Field(
        default=None,
        description="The networks the spec of this generation asks for, so the ipmanager can claim them "
        "from this event alone (absent in events of earlier versions).",
    )


class VNodeUnschedulable(EventModel):
    vnode: str
    reason: str


class ClusterUnschedulable(Payload):
    """No placement fits now; the scheduler retries by itself when capacity appears."""

    subject = "cluster.unschedulable"
    generation: int = Field(ge=1)
    message: str
    vnodes: list[VNodeUnschedulable] = Field(min_length=1)


class ClusterIPsAllocated(Payload):
    """Each vNode has its fixed IP, and the cluster its pod and service CIDRs."""

    subject = "cluster.ips.allocated"
    generation: int = Field(ge=1)
    uid: str | None = Field(
        default=None,
        description="The Vk8s object's uid the addresses are for (absent in events of earlier versions).",
    )
    vnode_ips: dict[str, str] = Field(min_length=1, description="vNode name -> fixed pod IP")
    pod_cidr: str
    service_cidr: str
    placements: list[VNodePlacement] = Field(min_length=1)


class VNodeRef(EventModel):
    vnode: str
    role: Literal["master", "worker"]
    pod: str
    host_node: str
    ip: str
    gpus: int = Field(ge=0)


class ClusterVNodesReady(Payload):
    """All vNode pods run; bootstrap can exec into them."""

    subject = "cluster.vnodes.ready"
    generation: int = Field(ge=1)
    vnodes: list[VNodeRef] = Field(min_length=1)
    pod_cidr: str
    service_cidr: str


SetupStatus = Literal["Running", "Success", "Failed"]


class VNodeSetupProgressed(Payload):
    """One bootstrap step on one vNode started, succeeded or failed."""

    subject = "cluster.vnode.setup"
    generation: int = Field(ge=1)
    vnode: str
    step: str
    status: SetupStatus
    message: str = ""
    attempt: int = Field(default=1, ge=1)


class ClusterKubernetesReady(Payload):
    """kubeadm finished: every vNode joined the inner cluster."""

    subject = "cluster.kubernetes.ready"
    generation: int = Field(ge=1)
    kubernetes_version: str
    kubeconfig_secret: str = Field(
        description="Secret holding the admin kubeconfig, in the cluster's platform namespace (a copy in the tenant's)."
    )
    api_server: str = Field(
        pattern=r"^https://[^\s/]+$",
        description="The inner API server (https://host:port) the admin kubeconfig names; "
        "the kubeflow stage trusts that Secret only for this server.",
    )
    nodes: list[str] = Field(min_length=1)


class KubeflowProgressed(Payload):
    """A Kubeflow install round or readiness check advanced."""

    subject = "cluster.kubeflow.progress"
    generation: int = Field(ge=1)
    release: str
    step: str
    ready: int = Field(ge=0)
    total: int = Field(ge=0)
    message: str = ""


class ClusterReady(Payload):
    """The cluster is up, and Kubeflow when asked for: applied, and available unless listed in
    `kubeflow_unavailable` (a stage that does not wait for availability says what it saw)."""

    subject = "cluster.ready"
    generation: int = Field(ge=1)
    kubeflow_release: str | None = None
    kubeflow_unavailable: list[str] = Field(
        default_factory=list, description="Kubeflow Deployments not available when the stage ended, with why."
    )


class ClusterPaused(Payload):
    """The vNodes are scaled to zero; their state stays on their volumes."""

    subject = "cluster.paused"
    generation: int = Field(ge=1)
    asked_at: AwareDatetime | None = Field(
        default=None,
        description="When the pause was asked: the time of the cluster.updated it answers. A placement "
        "asked for later (a resume) is not paused by it.",
    )


class ClusterVNodesDeleted(Payload):
    """The vNode objects and volumes are gone."""

    subject = "cluster.vnodes.deleted"
    uid: str


class ClusterIPsReleased(Payload):
    """The cluster's addresses and CIDRs are free again."""

    subject = "cluster.ips.released"
    uid: str
    released: list[str] = Field(default_factory=list)


class ClusterDeleted(Payload):
    """Everything the cluster held is free; the gateway removes the finalizer."""

    subject = "cluster.deleted"
    uid: str


class ClusterFailed(Payload):
    """A stage gave up on the cluster: which stage, why, and the event it was handling."""

    subject = "cluster.failed"
    stage: str
    reason: str = Field(description="CamelCase reason, e.g. RetriesExhausted, InvalidEvent, StepFailed.")
    message: str
    failed_event: str = Field(description="Type of the event whose handling failed.")
    generation: int | None = Field(default=None, ge=1)


EVENTS: tuple[type[Payload], ...] = (
    ClusterRequested,
    ClusterAccepted,
    ClusterRejected,
    ClusterUpdated,
    ClusterDeleteRequested,
    ClusterScheduled,
    ClusterUnschedulable,
    ClusterIPsAllocated,
    ClusterVNodesReady,
    VNodeSetupProgressed,
    ClusterKubernetesReady,
    KubeflowProgressed,
    ClusterReady,
    ClusterPaused,
    ClusterVNodesDeleted,
    ClusterIPsReleased,
    ClusterDeleted,
    ClusterFailed,
)

REGISTRY = Registry(EVENTS)


# Requesters do not publish into the stream: they ask the gateway on REQUEST_SUBJECT.<namespace>,
# a subject their NATS permissions scope to their namespaces, and the gateway publishes
# cluster.requested once the payload's namespace is the subject's.
REQUEST_SUBJECT = "vk8s.requests"


def request_subject(namespace: str) -> str:
    return f"{REQUEST_SUBJECT}.{namespace}"


# Requesters do not read the stream either (it holds every tenant's events): the projector relays each
# event it has folded on FEED_SUBJECT.<namespace>.<name>.<type> (core NATS), which their permissions
# scope to their namespaces as well. Their replies come on an inbox of their own, INBOX_PREFIX.<user>,
# so that no requester can subscribe to another's replies, nor to the services' (`_INBOX.>`).
FEED_SUBJECT = "vk8s.feed"
INBOX_PREFIX = "vk8s.inbox"
_FEED_TOKENS = FEED_SUBJECT.count(".") + 3  # then the event type, itself dotted


def feed_subject(cluster_id: str, event_type: str = ">") -> str:
    """Where events of cluster `<namespace>/<name>` (both DNS labels: no dots) are relayed: those of
    `event_type`, or (the default) a subscription to all of them."""
    namespace, name = cluster_id.split("/", 1)
    return f"{FEED_SUBJECT}.{namespace}.{name}.{event_type}"


def feed_event_type(subject: str) -> str:
    """The event type a feed subject carries."""
    return subject.split(".", _FEED_TOKENS)[-1]


def requester_inbox(user: str) -> str:
    return f"{INBOX_PREFIX}.{user}"


def service_inbox(service: str) -> str:
    """A service's replies (JetStream API answers, the messages it pulls) come on an inbox of its own, so
    that no other service may subscribe to them."""
    return f"_INBOX.{service}"

"""Every reason the pipeline puts on the wire, as constants (as cluster-api's `*Reason`): the
`reason` of cluster.failed and of the consumer's retry logs, and the reasons of the `Vk8s`
conditions. The values are the CamelCase strings that events, statuses, metrics and alerts carry;
the event contract keeps `reason` a plain string, so a newer stage may add one."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # -- the consumer wrapper: any stage -----------------------------------------------------------
    TRANSIENT = "Transient"
    PERMANENT = "Permanent"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    SHUTTING_DOWN = "ShuttingDown"
    INVALID_EVENT = "InvalidEvent"
    UNDECLARED_EVENT = "UndeclaredEvent"

    # -- gateway -------------------------------------------------------------------------------------
    REJECTED = "Rejected"
    # A reconcile of a Vk8s object failed (its status says so until a try succeeds); an API error
    # carries the apiserver's own reason, else one of these.
    RECONCILE_FAILED = "ReconcileFailed"
    API_SERVER_ERROR = "ApiServerError"
    API_ERROR = "ApiError"
    # An applied Vk8s names a password Secret or key that is not there: it waits for it.
    PASSWORD_SECRET_MISSING = "PasswordSecretMissing"
    # Kubernetes Events on the Vk8s object for a spec that is accepted with a warning.
    PLAIN_PASSWORD_DEPRECATED = "PlainPasswordDeprecated"
    SPEC_WARNING = "SpecWarning"

    # -- scheduler -----------------------------------------------------------------------------------
    NOT_SYNCED = "NotSynced"
    LOST_RACES = "LostRaces"
    PLACEHOLDER_RACE = "PlaceholderRace"
    # Why a vNode did not fit (cluster.unschedulable, by category in the metrics).
    NO_SCHEDULABLE_NODES = "NoSchedulableNodes"
    NO_GPU_NODES = "NoGpuNodes"
    GPU_MODEL_UNAVAILABLE = "GpuModelUnavailable"
    TAINT_NOT_TOLERATED = "TaintNotTolerated"
    GPUS_EXCEED_NODE_SIZE = "GpusExceedNodeSize"
    INSUFFICIENT_GPUS = "InsufficientGpus"
    INSUFFICIENT_CPU_MEMORY = "InsufficientCpuMemory"
    BEHIND_HEAD_OF_QUEUE = "BehindHeadOfQueue"

    # -- ipmanager -----------------------------------------------------------------------------------
    INVALID_UID = "InvalidUid"
    NETWORK_OVERLAP = "NetworkOverlap"
    NETWORK_IMMUTABLE = "NetworkImmutable"
    NETWORK_NOT_CLAIMED = "NetworkNotClaimed"
    POOL_EXHAUSTED = "PoolExhausted"
    CONTENTION = "Contention"

    # -- vnode ---------------------------------------------------------------------------------------
    SPEC_NOT_RECORDED = "SpecNotRecorded"
    PAUSED = "Paused"
    INCOMPLETE_ALLOCATION = "IncompleteAllocation"
    PREVIOUS_CLUSTER_DELETING = "PreviousClusterDeleting"
    NAME_CLASH = "NameClash"
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"
    NO_NODE_IMAGE = "NoNodeImage"
    INVALID_OBJECT = "InvalidObject"
    DELETING = "Deleting"
    CONFLICT = "Conflict"
    VNODES_NOT_RUNNING = "VNodesNotRunning"
    VNODES_NOT_STOPPED = "VNodesNotStopped"

    # -- bootstrap -----------------------------------------------------------------------------------
    NO_KUBERNETES_VERSION = "NoKubernetesVersion"
    UNKNOWN_VNODE = "UnknownVNode"
    NO_MASTER = "NoMaster"
    STEP_FAILED = "StepFailed"
    # Retried, not a failure: the API server did not start an exec (429, 5xx, no websocket).
    EXEC_UNAVAILABLE = "ExecUnavailable"
    NODE_IMAGE_UNSUPPORTED = "NodeImageUnsupported"
    NO_SERVER_VERSION = "NoServerVersion"
    KUBECONFIG_REFUSED = "KubeconfigRefused"

    # -- kubeflow ------------------------------------------------------------------------------------
    NO_COMPATIBLE_KUBEFLOW = "NoCompatibleKubeflow"
    NO_MANIFEST_SOURCE = "NoManifestSource"
    MANIFESTS_UNAVAILABLE = "ManifestsUnavailable"
    INVALID_MANIFESTS = "InvalidManifests"
    NO_MANIFESTS = "NoManifests"
    KUSTOMIZE_FAILED = "KustomizeFailed"
    SECRET_MISSING = "SecretMissing"
    APPLY_FAILED = "ApplyFailed"
    NO_DEX = "NoDex"
    KUBEFLOW_NOT_READY = "KubeflowNotReady"

    # -- conditions of the Vk8s status (projector); DELETING and PAUSED above serve there too. A
    # condition that is True has its type as its reason; one waiting behind another, WaitingFor<type>.
    RUNNING = "Running"
    UNSCHEDULABLE = "Unschedulable"
    PAUSING = "Pausing"
    SCHEDULING = "Scheduling"
    ALLOCATING_IPS = "AllocatingIPs"
    CREATING_VNODES = "CreatingVNodes"
    BOOTSTRAPPING_KUBERNETES = "BootstrappingKubernetes"
    INSTALLING_KUBEFLOW = "InstallingKubeflow"
    FINISHING_SETUP = "FinishingSetup"
    FAILED = "Failed"


# What a stage's cluster.failed can carry: the consumer wrapper's reasons for any stage, plus each
# stage's own (the projector's failure series start at 0 for these; a test checks them against
# the reasons each service's code fails with).
ANY_STAGE_FAILURES = (Reason.PERMANENT, Reason.RETRIES_EXHAUSTED, Reason.INVALID_EVENT, Reason.UNDECLARED_EVENT)
STAGE_FAILURES: dict[str, tuple[Reason, ...]] = {
    "gateway": (),
    "scheduler": (),
    "ipmanager": (Reason.INVALID_UID, Reason.NETWORK_OVERLAP, Reason.NETWORK_IMMUTABLE),
    "vnode": (
        Reason.INCOMPLETE_ALLOCATION,
        Reason.IMAGE_NOT_ALLOWED,
        Reason.INVALID_OBJECT,
        Reason.NAME_CLASH,
        Reason.NO_NODE_IMAGE,
        Reason.VNODES_NOT_RUNNING,
        Reason.VNODES_NOT_STOPPED,
    ),
    "bootstrap": (
        Reason.NO_KUBERNETES_VERSION,
        Reason.UNKNOWN_VNODE,
        Reason.NO_MASTER,
        Reason.STEP_FAILED,
        Reason.NODE_IMAGE_UNSUPPORTED,
        Reason.NO_SERVER_VERSION,
        Reason.KUBECONFIG_REFUSED,
    ),
    "kubeflow": (
        Reason.NO_COMPATIBLE_KUBEFLOW,
        Reason.NO_MANIFEST_SOURCE,
        Reason.INVALID_MANIFESTS,
        Reason.NO_MANIFESTS,
        Reason.KUSTOMIZE_FAILED,
        Reason.SECRET_MISSING,
        Reason.KUBECONFIG_REFUSED,
        Reason.APPLY_FAILED,
        Reason.NO_DEX,
        Reason.KUBEFLOW_NOT_READY,
    ),
    "projector": (),
}

"""The projector's pure fold: cluster events -> per-cluster read model -> `Vk8s` status. No I/O.

Why the result does not depend on delivery order or redelivery:

- `ClusterState` is, in essence, the *set* of facts applied so far (one compact `Fact` per
  event id). `apply` inserts a fact into that set, so a redelivered event changes nothing.
- Everything shown (phase, message, history, typed conditions, vNode setup statuses, stage
  timings) is computed by `_replay`, which walks the facts sorted by (event time, stage
  rank, id) through one step function. The output is a function of the set alone, so any
  permutation of the same events renders the same status, and a late event lands in its
  place in the history instead of being appended at the end.
- The step function never moves a run backwards: within a run (a generation's pipeline
  started by accepted/updated/resume) the phase follows the furthest stage reached, not the
  newest event; facts of an older generation are ignored; Failed and Paused hold until a
  newer generation or a resume; Deleting holds until a new object (another uid) appears.
- The set is bounded: past FACT_LIMIT facts the oldest (in replay order) are folded into a
  compacted prefix (`base`, `base_history`) which replay starts from, so replay(base, rest)
  equals replay(all). A fact older than that prefix arrives after FACT_LIMIT newer events of
  its cluster; it is dropped, as its effect is long superseded.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr
from pydantic.alias_generators import to_camel

from libs.api.models import (
    CONDITION_REASON_PATTERN,
    PHASE_HISTORY_LIMIT,
    Condition,
    Phase,
    PhaseRecord,
    Vk8sStatus,
    VNodeSetupStatus,
)
from libs.events import Envelope, Reason
from libs.events import catalog as ev

FACT_LIMIT = 500
"""Facts kept per cluster before the oldest are compacted; also the redelivery dedupe window."""

# Seed messages (the original controller's), kept verbatim for its users and samples.
CREATING_NODE = "creating node"
CONFIGURING_MASTER = "configuring master node"
INSTALLING_KUBEFLOW = "installing kubeflow"
RUNNING = "Running"

RESTARTS = (ev.ClusterRequested.subject, ev.ClusterAccepted.subject, ev.ClusterUpdated.subject)
DELETION = (
    ev.ClusterDeleteRequested.subject,
    ev.ClusterVNodesDeleted.subject,
    ev.ClusterIPsReleased.subject,
    ev.ClusterDeleted.subject,
)
FAILURES = (ev.ClusterFailed.subject, ev.ClusterRejected.subject)
# (stage, reason) a rejection is counted and shown as.
REJECTION_FAILURE = ("gateway", Reason.REJECTED)

# Progress within one run: the phase follows the highest rank reached. Equal ranks let a
# newer fact of the same stage refresh details (a newer unschedulable reason, Kubeflow count).
PIPELINE_RANK: dict[str, int] = {
    ev.ClusterRequested.subject: 0,
    ev.ClusterAccepted.subject: 1,
    ev.ClusterUpdated.subject: 1,
    ev.ClusterUnschedulable.subject: 2,
    ev.ClusterScheduled.subject: 3,
    ev.ClusterIPsAllocated.subject: 4,
    ev.ClusterVNodesReady.subject: 5,
    ev.VNodeSetupProgressed.subject: 6,
    ev.ClusterKubernetesReady.subject: 7,
    ev.KubeflowProgressed.subject: 8,
    ev.ClusterReady.subject: 9,
}
DELETION_RANK = {subject: rank for rank, subject in enumerate(DELETION)}
# Sort key tie-break for facts with the same time: causal order of the pipeline.
_TIE_RANK = {
    **PIPELINE_RANK,
    ev.ClusterPaused.subject: 10,
    ev.ClusterFailed.subject: 11,
    ev.ClusterRejected.subject: 11,
    **{subject: 20 + rank for subject, rank in DELETION_RANK.items()},
}

# (stage label, stage reached, stages that start it): time between consecutive stage events.
STAGE_TIMINGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("admission", ev.ClusterAccepted.subject, (ev.ClusterRequested.subject,)),
    ("scheduling", ev.ClusterScheduled.subject, (ev.ClusterAccepted.subject, ev.ClusterUpdated.subject)),
    ("ip_allocation", ev.ClusterIPsAllocated.subject, (ev.ClusterScheduled.subject,)),
    ("vnodes", ev.ClusterVNodesReady.subject, (ev.ClusterIPsAllocated.subject,)),
    ("kubernetes", ev.ClusterKubernetesReady.subject, (ev.ClusterVNodesReady.subject,)),
    ("kubeflow", ev.ClusterReady.subject, (ev.ClusterKubernetesReady.subject,)),
    ("pausing", ev.ClusterPaused.subject, (ev.ClusterUpdated.subject,)),
    ("deletion", ev.ClusterDeleted.subject, (ev.ClusterDeleteRequested.subject,)),
)


class StateModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, frozen=True, extra="forbid")


class Fact(StateModel):
    """What the projector keeps of one event: enough to replay it, far smaller than the event."""

    id: str
    time: AwareDatetime
    kind: str = Field(description="The event type.")
    generation: int | None = None
    uid: str | None = None
    paused: bool = False
    kubeflow: bool | None = Field(default=None, description="Spec events: whether Kubeflow is asked for.")
    nodes: int | None = None
    gpus: int | None = None
    vnodes: tuple[str, ...] = ()
    vnode: str | None = None
    step: str | None = Field(default=None, description="Setup or Kubeflow step; for failures, the stage.")
    status: str | None = None
    reason: str | None = None
    detail: str = ""
    ready: int | None = None
    total: int | None = None
    unavailable: tuple[str, ...] = Field(default=(), description="cluster.ready: Kubeflow Deployments not available.")

    def order(self) -> tuple[datetime, int, str]:
        return (self.time, _TIE_RANK.get(self.kind, 99), self.id)


def fact_from(envelope: Envelope[Any]) -> Fact:
    """The compact fact of an event; the only place that knows the payload shapes."""
    data = envelope.data
    base: dict[str, Any] = {"id": envelope.id, "time": envelope.time, "kind": envelope.type}
    base["generation"] = getattr(data, "generation", None)
    base["uid"] = getattr(data, "uid", None)
    match data:
        case ev.ClusterRequested() | ev.ClusterAccepted() | ev.ClusterUpdated():
            spec = data.spec
            extra: dict[str, Any] = {
                "kubeflow": spec.kubeflow is not None,
                "nodes": len(spec.nodes),
                "gpus": spec.gpus_total(),
                "paused": getattr(data, "paused", False),
            }
        case ev.ClusterRejected():
            step, reason = REJECTION_FAILURE
            extra = {"step": step, "reason": reason, "detail": "; ".join(data.problems)}
        case ev.ClusterFailed():
            extra = {"step": data.stage, "reason": data.reason, "detail": data.message}
        case ev.ClusterUnschedulable():
            reasons = "; ".join(f"{v.vnode}: {v.reason}" for v in data.vnodes)
            extra = {"detail": f"{data.message} ({reasons})"}
        case ev.ClusterScheduled():
            extra = {
                "vnodes": tuple(p.vnode for p in data.placements),
                "detail": ", ".join(f"{p.vnode} on {p.host_node}" for p in data.placements),
            }
        case ev.ClusterIPsAllocated():
            extra = {
                "vnodes": tuple(sorted(data.vnode_ips)),
                "detail": ", ".join(f"{vnode}={ip}" for vnode, ip in sorted(data.vnode_ips.items())),
            }
        case ev.ClusterVNodesReady():
            extra = {"vnodes": tuple(v.vnode for v in data.vnodes)}
        case ev.VNodeSetupProgressed():
            extra = {"vnode": data.vnode, "step": data.step, "status": data.status, "detail": data.message}
        case ev.ClusterKubernetesReady():
            extra = {"vnodes": tuple(data.nodes), "detail": data.kubernetes_version}
        case ev.KubeflowProgressed():
            extra = {"step": data.step, "ready": data.ready, "total": data.total, "detail": data.release}
        case ev.ClusterReady():
            extra = {"detail": data.kubeflow_release or "", "unavailable": tuple(data.kubeflow_unavailable)}
        case _:
            extra = {}
    return Fact(**base, **extra)


class VNodeProgress(StateModel):
    status: str = ""
    setup: Literal["", "Success", "Failed"] = ""
    message: str = ""


class Progress(StateModel):
    """The state of one replay after some prefix of the facts (see `step`)."""

    uid: str | None = None
    generation: int = 0
    mode: Literal["pipeline", "pause"] = "pipeline"
    run_start: Fact | None = None
    stage: Fact | None = None
    reached: dict[str, Fact] = Field(default_factory=dict, description="First fact of each stage in this run.")
    failure: Fact | None = None
    deletion: Fact | None = None
    deletion_reached: dict[str, Fact] = Field(default_factory=dict)
    spec: Fact | None = None
    vnodes: dict[str, VNodeProgress] = Field(default_factory=dict)
    last_time: AwareDatetime | None = None

    def step(self, fact: Fact) -> Progress:
        """The progress after `fact`, which is not older (in replay order) than any fact before."""
        progress = self.model_copy(update={"last_time": fact.time})
        if _new_object(progress, fact):
            progress = Progress(uid=fact.uid, last_time=fact.time)
        elif fact.uid is not None and progress.uid is not None and fact.uid != progress.uid:
            return progress  # a late fact of an earlier object of the same name
        if fact.uid is not None:
            progress = progress.model_copy(update={"uid": fact.uid})
        if fact.kind in DELETION:
            return progress._deleting(fact)
        if progress.deletion is not None:
            # Once deletion has started only its own progress, or its failure, matters.
            return progress._failed(fact) if fact.kind == ev.ClusterFailed.subject else progress
        if fact.generation is not None and fact.generation < progress.generation:
            return progress  # superseded by a newer spec
        if fact.generation is not None and fact.generation > progress.generation:
            # A newer spec starts a new run; the first generation continues its request's run.
            first = progress.generation == 0
            progress = progress.model_copy(update={"generation": fact.generation})
            progress = progress if first else progress._new_run(None)
        if fact.kind in RESTARTS:
            return progress._restart(fact)
        if fact.kind in FAILURES:
            return progress._failed(fact)
        if fact.kind == ev.ClusterPaused.subject:
            if progress.mode != "pause":
                return progress  # answers a pause that a resume has superseded since
            return progress._reach(fact).model_copy(update={"mode": "pause", "stage": fact})
        return progress._pipeline(fact)

    def _new_run(self, start: Fact | None, *, mode: Literal["pipeline", "pause"] = "pipeline") -> Progress:
        progress = self.model_copy(
            update={"run_start": start, "stage": start, "mode": mode, "failure": None, "reached": {}}
        )
        return progress._reach(start) if start is not None else progress

    def _restart(self, fact: Fact) -> Progress:
        current = self.stage.kind if self.stage is not None else None
        if fact.kind == ev.ClusterRequested.subject:
            # A request only starts the story of a cluster that has none yet.
            return self.model_copy(update={"spec": fact})._new_run(fact) if current is None else self
        progress = self.model_copy(update={"spec": fact})
        if fact.kind == ev.ClusterAccepted.subject:
            if current in (None, ev.ClusterRequested.subject):
                return progress._reach(fact).model_copy(update={"stage": fact, "run_start": self.run_start or fact})
            return progress  # accepted again (a resync): the run goes on
        # cluster.updated of the same generation (labels, annotations) restarts only a pause or a resume.
        if fact.paused:
            return progress if progress.mode == "pause" else progress._new_run(fact, mode="pause")
        if progress.mode == "pause" or progress.run_start is None:
            return progress._new_run(fact)
        return progress

    def _failed(self, fact: Fact) -> Progress:
        # The first failure of a run is its cause; it holds until a new run (or deletion step).
        return self if self.failure is not None else self.model_copy(update={"failure": fact})

    def _pipeline(self, fact: Fact) -> Progress:
        progress = self._track_vnodes(fact)
        if progress.mode == "pause" or progress.failure is not None:
            return progress  # in-flight work of a run that was paused or has failed
        rank = PIPELINE_RANK[fact.kind]
        if progress.stage is not None and rank < PIPELINE_RANK.get(progress.stage.kind, -1):
            return progress  # a stage this run is already past
        return progress._reach(fact).model_copy(update={"stage": fact})

    def _track_vnodes(self, fact: Fact) -> Progress:
        vnodes = dict(self.vnodes)
        if fact.kind in (ev.ClusterScheduled.subject, ev.ClusterIPsAllocated.subject):
            # They list every vNode of the generation: one the spec dropped (scale-in) has no status.
            vnodes = {name: node for name, node in vnodes.items() if name in fact.vnodes}
        elif fact.kind == ev.ClusterVNodesReady.subject:
            for name in fact.vnodes:
                vnodes[name] = vnodes.get(name, VNodeProgress()).model_copy(update={"status": "Running"})
        elif fact.kind == ev.VNodeSetupProgressed.subject and fact.vnode is not None:
            current = vnodes.get(fact.vnode, VNodeProgress())
            setup = "Failed" if fact.status == "Failed" else ("" if current.setup == "Failed" else current.setup)
            message = f"{fact.step} {(fact.status or '').lower()}" + (f": {fact.detail}" if fact.detail else "")
            vnodes[fact.vnode] = VNodeProgress(status="Running", setup=setup, message=message)
        elif fact.kind == ev.ClusterKubernetesReady.subject:
            # Every node has joined: each known vNode is set up.
            for name, node in vnodes.items():
                vnodes[name] = node.model_copy(update={"setup": "Success", "status": node.status or "Running"})
        else:
            return self
        return self.model_copy(update={"vnodes": vnodes})

    def _deleting(self, fact: Fact) -> Progress:
        reached = dict(self.deletion_reached)
        reached.setdefault(fact.kind, fact)
        if self.deletion is not None and DELETION_RANK[fact.kind] < DELETION_RANK[self.deletion.kind]:
            return self.model_copy(update={"deletion_reached": reached})
        # Deletion supersedes the run's failure; a deletion step past a failed one clears it.
        failure = self.failure if self.deletion is not None and fact.kind == self.deletion.kind else None
        return self.model_copy(update={"deletion": fact, "deletion_reached": reached, "failure": failure})

    def _reach(self, fact: Fact) -> Progress:
        if fact.kind in self.reached:
            return self
        return self.model_copy(update={"reached": {**self.reached, fact.kind: fact}})


def _new_object(progress: Progress, fact: Fact) -> bool:
    """Whether `fact` is the first of a new object of the same name: a request or acceptance of
    another uid, or any fact of another uid (or a request) once the old object is deleted."""
    deleted = progress.deletion is not None and progress.deletion.kind == ev.ClusterDeleted.subject
    starts = fact.kind in (ev.ClusterAccepted.subject, ev.ClusterRequested.subject)
    if fact.uid is not None and progress.uid is not None and fact.uid != progress.uid:
        return starts or deleted
    return deleted and fact.kind == ev.ClusterRequested.subject


class ClusterState(StateModel):
    """The read model of one cluster: the newest facts, plus the compacted replay of older ones."""

    cluster_id: str
    facts: tuple[Fact, ...] = Field(default=(), description="Sorted in replay order; ids unique.")
    base: Progress = Field(default_factory=Progress)
    base_history: tuple[PhaseRecord, ...] = ()
    horizon: Fact | None = Field(default=None, description="The newest compacted fact.")
    _replay: Replay | None = PrivateAttr(default=None)

    @property
    def namespace(self) -> str:
        return self.cluster_id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.cluster_id.split("/", 1)[1]

    def has(self, event_id: str) -> bool:
        return any(fact.id == event_id for fact in self.facts)

    def changed(self, **update: Any) -> ClusterState:
        # model_copy would carry the cached replay of this state over to the new one.
        return ClusterState.model_validate({**dict(self), **update})


def apply(state: ClusterState | None, envelope: Envelope[Any]) -> ClusterState:
    """The state with this event applied; the same object back when it changes nothing."""
    if state is None:
        state = ClusterState(cluster_id=envelope.cluster_id)
    fact = fact_from(envelope)
    if state.has(fact.id):
        return state
    if state.horizon is not None and fact.order() <= state.horizon.order():
        return state
    facts = list(state.facts)
    bisect.insort(facts, fact, key=Fact.order)
    if len(facts) <= FACT_LIMIT:
        return state.changed(facts=tuple(facts))
    compacted, kept = facts[: len(facts) - FACT_LIMIT], facts[len(facts) - FACT_LIMIT :]
    replay = _replay(state.base, state.base_history, compacted)
    return state.changed(facts=tuple(kept), base=replay.progress, base_history=replay.history, horizon=compacted[-1])


class Timing(StateModel):
    """One observation for the metrics: `stage` is a STAGE_TIMINGS label or "running"."""

    stage: str
    seconds: float


@dataclass(frozen=True)
class Replay:
    progress: Progress
    history: tuple[PhaseRecord, ...]
    timings: dict[str, Timing]


def _replay(progress: Progress, history: Iterable[PhaseRecord], facts: Iterable[Fact]) -> Replay:
    records = list(history)
    timings: dict[str, Timing] = {}
    for fact in facts:
        before = progress
        if _new_object(before, fact):
            records = []  # a new object of the same name: its history starts afresh
        progress = progress.step(fact)
        timings.update(_timings(before, progress, fact))
        phase, message = phase_of(progress)
        if phase is not None and (not records or (records[-1].phase, records[-1].message) != (phase, message)):
            records.append(PhaseRecord(phase=phase, message=message, last_probe_time=fact.time))
    return Replay(progress, tuple(records[-PHASE_HISTORY_LIMIT:]), timings)


_TIMED = frozenset(stage for _, stage, _ in STAGE_TIMINGS)


def _timings(before: Progress, after: Progress, fact: Fact) -> dict[str, Timing]:
    """Durations that `fact` completes, keyed by its id so each is observed once."""
    found: dict[str, Timing] = {}
    if fact.kind not in _TIMED:
        return found
    newly = {k: f for k, f in after.reached.items() if before.reached.get(k) is not f}
    newly.update({k: f for k, f in after.deletion_reached.items() if before.deletion_reached.get(k) is not f})
    reached = {**after.reached, **after.deletion_reached}
    for label, stage, starts in STAGE_TIMINGS:
        if stage in newly:
            start = next((reached[s] for s in starts if s in reached and reached[s] is not newly[stage]), None)
            if start is not None:
                found[f"{fact.id}/{label}"] = Timing(stage=label, seconds=(fact.time - start.time).total_seconds())
    accepted = after.reached.get(ev.ClusterAccepted.subject)
    if ev.ClusterReady.subject in newly and accepted is not None:
        found[f"{fact.id}/running"] = Timing(stage="running", seconds=(fact.time - accepted.time).total_seconds())
    return found


def replay(state: ClusterState) -> Replay:
    # Cached on the (immutable) state: rendering and timings of one state share one replay.
    if state._replay is None:
        state._replay = _replay(state.base, state.base_history, state.facts)
    return state._replay


def expired(state: ClusterState, now: datetime, retention: timedelta) -> bool:
    """Whether the cluster ended deleted (cluster.deleted, no new object since) at least
    `retention` ago: its record has nothing left to tell and may go."""
    deletion = replay(state).progress.deletion
    return deletion is not None and deletion.kind == ev.ClusterDeleted.subject and now - deletion.time >= retention


def timings(state: ClusterState) -> dict[str, Timing]:
    """Stage durations known from this state's facts, keyed so a duration is counted once."""
    return replay(state).timings


def phase_of(progress: Progress) -> tuple[Phase | None, str]:
    if progress.deletion is not None and progress.failure is not None:
        return Phase.FAILED, f"deletion failed: {_failure_message(progress.failure)}"
    if progress.deletion is not None:
        return Phase.DELETING, _DELETION_MESSAGE[progress.deletion.kind]
    if progress.failure is not None:
        return Phase.FAILED, _failure_message(progress.failure)
    if progress.mode == "pause":
        paused = progress.stage is not None and progress.stage.kind == ev.ClusterPaused.subject
        return Phase.PAUSED, "paused" if paused else "stopping vnodes"
    stage = progress.stage
    if stage is None:
        return None, ""
    if stage.kind == ev.ClusterRequested.subject:
        return Phase.WAITING, "validating request"
    if stage.kind == ev.ClusterUnschedulable.subject:
        return Phase.PENDING, f"unschedulable: {stage.detail}"
    rank = PIPELINE_RANK[stage.kind]
    if rank <= PIPELINE_RANK[ev.ClusterIPsAllocated.subject]:
        return Phase.WAITING, CREATING_NODE
    if rank < PIPELINE_RANK[ev.ClusterKubernetesReady.subject]:
        return Phase.INSTALLING, CONFIGURING_MASTER
    if stage.kind == ev.ClusterReady.subject:
        if stage.unavailable:
            return Phase.RUNNING, f"{RUNNING}; Kubeflow {stage.detail} applied, {len(stage.unavailable)} deployments not available"
        return Phase.RUNNING, RUNNING
    return Phase.INSTALLING, INSTALLING_KUBEFLOW if _kubeflow_asked(progress) else "finishing cluster setup"


_DELETION_MESSAGE = {
    ev.ClusterDeleteRequested.subject: "deleting vnodes",
    ev.ClusterVNodesDeleted.subject: "releasing vnode IPs",
    ev.ClusterIPsReleased.subject: "releasing GPU reservations",
    ev.ClusterDeleted.subject: "deleted",
}


def _failure_message(failure: Fact) -> str:
    if failure.kind == ev.ClusterRejected.subject:
        return f"request rejected: {failure.detail}"
    return f"{failure.step}: {failure.detail}"


def _kubeflow_asked(progress: Progress) -> bool:
    return progress.spec is None or progress.spec.kubeflow is not False


@dataclass(frozen=True)
class _Step:
    type: str
    stage: str
    waiting_reason: Reason
    waiting_message: str


STEPS = (
    _Step("Scheduled", ev.ClusterScheduled.subject, Reason.SCHEDULING, "waiting for the scheduler to place the vnodes"),
    _Step("IPsAllocated", ev.ClusterIPsAllocated.subject, Reason.ALLOCATING_IPS, "waiting for fixed pod IPs for the vnodes"),
    _Step("VNodesReady", ev.ClusterVNodesReady.subject, Reason.CREATING_VNODES, "waiting for the vnode pods to run"),
    _Step(
        "KubernetesReady",
        ev.ClusterKubernetesReady.subject,
        Reason.BOOTSTRAPPING_KUBERNETES,
        "waiting for kubeadm to set up Kubernetes on the vnodes",
    ),
    _Step("KubeflowReady", ev.ClusterReady.subject, Reason.INSTALLING_KUBEFLOW, "waiting for the Kubeflow deployments"),
)
CONDITION_TYPES = (*(s.type for s in STEPS), "Ready")


def render_status(state: ClusterState) -> dict[str, Any]:
    """The whole `Vk8s` status (camelCase JSON) for this state: safe to write again and again."""
    result = replay(state)
    progress = result.progress
    phase, message = phase_of(progress)
    spec = progress.spec
    status = Vk8sStatus(
        phase=phase,
        message=message if phase is not None else None,
        conditions=result.history,
        readiness=_conditions(progress),
        vnode_kubernetes_setup_statuses={
            name: VNodeSetupStatus(status=node.status, is_kubernetes_setup=node.setup, message=node.message)
            for name, node in sorted(progress.vnodes.items())
        },
        observed_generation=progress.generation or None,
        nodes=spec.nodes if spec is not None else None,
        gpus=spec.gpus if spec is not None else None,
    )
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def _conditions(progress: Progress) -> tuple[Condition, ...]:
    """One condition per pipeline step, then Ready. Steps up to the furthest stage reached are
    True; the first one not reached (the frontier) says what is awaited or what stopped it;
    later ones wait for the frontier; Ready mirrors the frontier."""
    if progress.last_time is None:
        return ()
    generation = progress.generation or None
    blocked = _blocked(progress)
    stopped = progress.deletion is not None or progress.mode == "pause"
    conditions: list[Condition] = []
    frontier: Condition | None = None
    for step in STEPS:
        if not stopped and step.type == "KubeflowReady" and not _kubeflow_asked(progress):
            since = progress.spec.time if progress.spec is not None else _waiting_since(progress)
            conditions.append(_condition(step.type, "True", "NotRequested", "no Kubeflow asked for", since, generation))
            continue
        if frontier is None and not stopped and (unavailable := _kubeflow_unavailable(progress, step)):
            # Applied, but not waited for: say which Deployments are not available and why.
            message = f"Kubeflow applied; not available: {'; '.join(unavailable)}"
            since = _since(progress, step)
            conditions.append(_condition(step.type, "False", "DeploymentsUnavailable", message, since, generation))
            continue
        if frontier is None and not stopped and _stage_rank(progress) >= PIPELINE_RANK[step.stage]:
            message = _done_message(progress, step)
            conditions.append(_condition(step.type, "True", step.type, message, _since(progress, step), generation))
            continue
        if blocked is not None and (frontier is None or stopped):
            reason, message, since = blocked
        elif frontier is None:
            reason, message = _waiting(progress, step)
            since = _waiting_since(progress)
        else:
            reason, message = f"WaitingFor{frontier.type}", f"waiting for {frontier.type}"
            since = frontier.last_transition_time
        condition = _condition(step.type, "False", reason, message, since, generation)
        frontier = frontier or condition
        conditions.append(condition)
    ready = progress.reached.get(ev.ClusterReady.subject)
    if frontier is None and ready is not None and blocked is None:
        conditions.append(_condition("Ready", "True", Reason.RUNNING, "the cluster is running", ready.time, generation))
    elif frontier is None:
        # No Kubeflow asked for: every step is done but the final cluster.ready.
        reason, message, since = blocked or (Reason.FINISHING_SETUP, "waiting for the cluster to be marked ready",
                                             _waiting_since(progress))
        conditions.append(_condition("Ready", "False", reason, message, since, generation))
    else:
        conditions.append(frontier.model_copy(update={"type": "Ready"}))
    return tuple(conditions)


def _kubeflow_unavailable(progress: Progress, step: _Step) -> tuple[str, ...]:
    ready = progress.reached.get(ev.ClusterReady.subject)
    return ready.unavailable if step.type == "KubeflowReady" and ready is not None else ()


def _stage_rank(progress: Progress) -> int:
    if progress.mode != "pipeline" or progress.stage is None:
        return -1
    return PIPELINE_RANK[progress.stage.kind]


def _blocked(progress: Progress) -> tuple[str, str, datetime] | None:
    """Why every unmet condition is stuck, when it is not simply waiting: (reason, message, since)."""
    if progress.deletion is not None:
        return Reason.DELETING, f"deleting the cluster: {_DELETION_MESSAGE[progress.deletion.kind]}", progress.deletion.time
    if progress.failure is not None:
        failure = progress.failure
        return _reason(failure.reason or Reason.FAILED), _failure_message(failure), failure.time
    if progress.mode == "pause":
        stage = progress.stage
        assert stage is not None
        if stage.kind == ev.ClusterPaused.subject:
            return Reason.PAUSED, "paused: remove the vk8s-resource-stopped annotation to resume", stage.time
        return Reason.PAUSING, "waiting for the vnodes to stop", stage.time
    return None


def _waiting(progress: Progress, step: _Step) -> tuple[str, str]:
    stage = progress.stage
    if step.type == "Scheduled" and stage is not None and stage.kind == ev.ClusterUnschedulable.subject:
        return Reason.UNSCHEDULABLE, f"waiting for capacity: {stage.detail}"
    if step.type == "KubernetesReady" and progress.vnodes:
        nodes = ", ".join(
            f"{name}: {node.message or node.status or 'waiting'}" for name, node in sorted(progress.vnodes.items())
        )
        return step.waiting_reason, f"{step.waiting_message} ({nodes})"
    if step.type == "KubeflowReady" and stage is not None and stage.kind == ev.KubeflowProgressed.subject:
        return step.waiting_reason, (
            f"waiting for Kubeflow {stage.detail}: {stage.ready}/{stage.total} deployments available ({stage.step})"
        )
    return step.waiting_reason, step.waiting_message


def _done_message(progress: Progress, step: _Step) -> str:
    fact = progress.reached.get(step.stage)
    if fact is None:
        return ""
    match step.type:
        case "Scheduled":
            return f"vnodes placed: {fact.detail}"
        case "IPsAllocated":
            return f"fixed pod IPs: {fact.detail}"
        case "VNodesReady":
            return f"{len(fact.vnodes)} vnode pods running"
        case "KubernetesReady":
            return f"Kubernetes {fact.detail} on {len(fact.vnodes)} nodes"
        case _:
            return f"Kubeflow {fact.detail} is ready" if fact.detail else "no Kubeflow asked for"


def _since(progress: Progress, step: _Step) -> datetime:
    """When a condition became True: the first fact in this run at or past its stage."""
    rank = PIPELINE_RANK[step.stage]
    times = [f.time for kind, f in progress.reached.items() if PIPELINE_RANK.get(kind, -1) >= rank]
    return min(times) if times else _waiting_since(progress)


def _waiting_since(progress: Progress) -> datetime:
    start = progress.run_start or progress.stage
    if start is not None:
        return start.time
    assert progress.last_time is not None
    return progress.last_time


def _condition(type_: str, status: str, reason: str, message: str, time: datetime, generation: int | None) -> Condition:
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=time,
        observed_generation=generation,
    )


def _reason(text: str) -> str:
    """A condition reason from a failure's reason, which other services set and may spell freely."""
    if re.fullmatch(CONDITION_REASON_PATTERN, text):
        return text
    camel = "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", text) if part)
    return camel if camel and camel[0].isalpha() else Reason.FAILED

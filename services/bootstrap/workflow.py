"""Bootstrapping one cluster: an idempotent sequence of steps per vNode, each run over exec,
retried with backoff a bounded number of times, each outcome reported as an event."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from libs.backoff import backoff_delay
from libs.events import PermanentError, Reason, TransientError
from libs.events.catalog import SetupStatus
from services.bootstrap import logic
from services.bootstrap.adapters.node_exec import ExecResult, ExecUnavailable, NodeCommands


@dataclass(frozen=True)
class StepProgress:
    """One try of one step on one vNode started, succeeded or failed (`message` says why)."""

    vnode: str
    step: str
    status: SetupStatus
    attempt: int
    message: str = ""


Progress = Callable[[StepProgress], Awaitable[None]]


@dataclass(frozen=True)
class VNodeTarget:
    vnode: str
    role: str
    namespace: str
    pod: str
    ip: str
    gpus: int
    cpu_limit: str
    memory_limit: str


@dataclass(frozen=True)
class ClusterPlan:
    name: str
    kubernetes_version: str
    master: VNodeTarget
    workers: tuple[VNodeTarget, ...]
    pod_cidr: str
    service_cidr: str


@dataclass(frozen=True)
class Timeouts:
    control_plane_s: int  # kubeadm init's wait for a healthy control plane
    nodes_ready_s: int  # how long the inner nodes may take to turn Ready with their GPUs


class StepRunner:
    def __init__(self, node_exec: NodeCommands, progress: Progress, attempts: int, backoff_s: float):
        self._exec = node_exec
        self._progress = progress
        self._attempts = attempts
        self._backoff_s = backoff_s

    async def run(self, target: VNodeTarget, step: str, argv: list[str]) -> ExecResult:
        message = ""
        for attempt in range(1, self._attempts + 1):
            await self._progress(StepProgress(target.vnode, step, "Running", attempt))
            try:
                result = await self._exec.run(target.namespace, target.pod, logic.via_shell(argv))
            except ExecUnavailable as error:
                # The API server's trouble, not the node's: no try of the step is spent, the whole
                # message is retried later (every step is idempotent). Redacted: the URL holds argv.
                message = logic.step_failure(str(error), argv)
                raise TransientError(f"{target.vnode}: step {step}: {message}", reason=Reason.EXEC_UNAVAILABLE) from None
            except Exception as error:  # noqa: BLE001 - the transport failing is a failed try too
                message = logic.step_failure(f"{type(error).__name__}: {error}", argv)
            else:
                if result.exit_code == 0:
                    await self._progress(StepProgress(target.vnode, step, "Success", attempt))
                    return result
                message = logic.step_failure(f"exit {result.exit_code}: {result.summary()}", argv)
            if attempt < self._attempts:
                await asyncio.sleep(backoff_delay(attempt, self._backoff_s))
        await self._progress(StepProgress(target.vnode, step, "Failed", self._attempts, message))
        raise PermanentError(
            f"{target.vnode}: step {step} failed after {self._attempts} attempts: {message}", reason=Reason.STEP_FAILED
        )


async def _prepare(runner: StepRunner, target: VNodeTarget) -> logic.NodeState:
    await runner.run(
        target, "prepare", logic.prepare_args(node_name=target.vnode, cpu_limit=target.cpu_limit, memory_limit=target.memory_limit, gpus=target.gpus)
    )
    return logic.NodeState.parse((await runner.run(target, "state", ["vk8s-node", "state"])).stdout)


async def _apply(runner: StepRunner, target: VNodeTarget, step: str, path: str, manifest: str) -> None:
    await runner.run(target, f"{step}-write", logic.write_command(path, manifest))
    await runner.run(target, step, ["vk8s-node", "apply", path])


async def bootstrap_master(runner: StepRunner, plan: ClusterPlan, timeouts: Timeouts) -> str:
    """Init (or restart after a pause) the control plane and install the addons; returns the
    admin kubeconfig."""
    master = plan.master
    state = await _prepare(runner, master)
    if state.initialized:
        await runner.run(master, "start", ["vk8s-node", "start", str(timeouts.control_plane_s)])
    else:
        if not state.kubernetes_version:
            raise PermanentError(f"{master.vnode}: the node image reports no kubeadm version", reason=Reason.NODE_IMAGE_UNSUPPORTED)
        config = logic.kubeadm_init_config(
            kubeadm_version=state.kubernetes_version,
            node_name=master.vnode,
            network=logic.ClusterNetwork(master.ip, plan.pod_cidr, plan.service_cidr),
            cluster_name=plan.name,
            schedulable_master=not plan.workers,
            control_plane_timeout_s=timeouts.control_plane_s,
        )
        await runner.run(master, "kubeadm-config", logic.write_command(logic.KUBEADM_CONFIG, config))
        await runner.run(master, "kubeadm-init", ["vk8s-node", "init", logic.KUBEADM_CONFIG, str(timeouts.control_plane_s)])
    await _apply(
        runner, master, "cni", logic.CNI_MANIFEST, logic.cni_manifest(plan.kubernetes_version, plan.pod_cidr, plan.service_cidr)
    )
    await _apply(
        runner, master, "gpu-device-plugin", logic.DEVICE_PLUGIN_MANIFEST, logic.device_plugin_manifest(plan.kubernetes_version)
    )
    await _apply(runner, master, "storage", logic.STORAGE_MANIFEST, logic.storage_manifest(plan.kubernetes_version))
    return (await runner.run(master, "kubeconfig", ["vk8s-node", "kubeconfig"])).stdout


async def join_worker(runner: StepRunner, plan: ClusterPlan, worker: VNodeTarget) -> None:
    """Joins with a fresh token, so a worker added later joins the same way as the first ones."""
    state = await _prepare(runner, worker)
    if state.joined:
        await runner.run(worker, "start", ["vk8s-node", "start"])
        return
    join = await runner.run(plan.master, f"join-command-{worker.vnode}", ["vk8s-node", "join-command"])
    await runner.run(worker, "kubeadm-join", logic.join_args(join.stdout, worker.vnode))


@dataclass(frozen=True)
class Bootstrapped:
    kubeconfig: str
    server_version: str  # what the inner API server reports, e.g. v1.36.3


async def bootstrap(runner: StepRunner, plan: ClusterPlan, timeouts: Timeouts) -> Bootstrapped:
    """The cluster is bootstrapped once every node is Ready; its version is what its API server says."""
    kubeconfig = await bootstrap_master(runner, plan, timeouts)
    try:
        async with asyncio.TaskGroup() as group:
            for worker in plan.workers:
                group.create_task(join_worker(runner, plan, worker))
    except* PermanentError as failed:
        raise failed.exceptions[0] from None
    nodes = [f"{target.vnode}={target.gpus}" for target in (plan.master, *plan.workers)]
    await runner.run(plan.master, "nodes-ready", ["vk8s-node", "wait-ready", str(timeouts.nodes_ready_s), *nodes])
    version = await runner.run(plan.master, "server-version", ["vk8s-node", "server-version"])
    try:
        return Bootstrapped(kubeconfig, logic.server_version(version.stdout))
    except ValueError as error:
        raise PermanentError(f"{plan.master.vnode}: {error}", reason=Reason.NO_SERVER_VERSION) from None

"""cluster.vnodes.ready -> kubeadm init/join and addons over exec -> cluster.kubernetes.ready."""

from __future__ import annotations

from typing import Any

import structlog

from libs.api import Vk8s, admin_kubeconfig_secret_name
from libs.events import Envelope, PermanentError, Publisher, Publishes, Reason, declare, subscriber
from libs.events.catalog import ClusterKubernetesReady, ClusterVNodesReady, VNodeSetupProgressed
from libs.events.consumer import Clock
from libs.kube.inner import KubeconfigRefused, inner_credentials
from libs.kube.vnodes import platform_namespace
from services.bootstrap import logic, workflow
from services.bootstrap.adapters.host import ClusterHost
from services.bootstrap.adapters.metrics import BootstrapMetrics
from services.bootstrap.adapters.node_exec import NodeCommands
from services.bootstrap.settings import BootstrapSettings

log = structlog.get_logger(__name__)


def plan_for(vk8s: Vk8s, event: ClusterVNodesReady, namespace: str) -> workflow.ClusterPlan:
    version = vk8s.spec.kubernetes_version()
    if version is None:
        raise PermanentError("the cluster names no Kubernetes version", reason=Reason.NO_KUBERNETES_VERSION)
    nodes = {node.name: node for node in vk8s.spec.nodes}

    def target(ref: Any) -> workflow.VNodeTarget:
        node = nodes.get(ref.vnode)
        if node is None:
            raise PermanentError(f"vNode {ref.vnode} is not in the spec", reason=Reason.UNKNOWN_VNODE)
        limits = {**node.resources.requests, **node.resources.limits}
        return workflow.VNodeTarget(
            vnode=ref.vnode,
            role=ref.role,
            namespace=namespace,
            pod=ref.pod,
            ip=ref.ip,
            gpus=ref.gpus,
            cpu_limit=str(limits.get("cpu", "1")),
            memory_limit=str(limits.get("memory", "1Gi")),
        )

    masters = [ref for ref in event.vnodes if ref.role == "master"]
    if len(masters) != 1:
        raise PermanentError(f"expected one master vNode, got {len(masters)}", reason=Reason.NO_MASTER)
    return workflow.ClusterPlan(
        name=vk8s.metadata.name,
        kubernetes_version=version,
        master=target(masters[0]),
        workers=tuple(target(ref) for ref in event.vnodes if ref.role != "master"),
        pod_cidr=event.pod_cidr,
        service_cidr=event.service_cidr,
    )


class BootstrapHandlers:
    def __init__(
        self,
        *,
        host: ClusterHost,
        node_exec: NodeCommands,
        settings: BootstrapSettings,
        publisher: Publisher,
        metrics: BootstrapMetrics,
        clock: Clock,
    ):
        self._host = host
        self._exec = node_exec
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        self._clock = clock

    @subscriber(ClusterVNodesReady, emits=(ClusterKubernetesReady,))
    async def vnodes_ready(self, event: Envelope[ClusterVNodesReady]) -> list[Envelope[Any]]:
        namespace, name = event.cluster_id.split("/", 1)
        obj = await self._host.vk8s(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            log.info("Skipping bootstrap: the cluster is gone or going")
            return []
        vk8s = Vk8s.model_validate(obj)
        # The vNodes, and every credential of the cluster, live in its platform namespace.
        vnode_namespace = platform_namespace(namespace, name)
        plan = plan_for(vk8s, event.data, vnode_namespace)
        for target in (plan.master, *plan.workers):
            # Exec runs as root in the named pod: only the vNode the vnode stage made qualifies.
            if (why := await self._not_the_vnode(target, obj["metadata"]["uid"])) is not None:
                log.error(
                    "Refused cluster.vnodes.ready: a pod it names is not the cluster's vNode",
                    pod=f"{vnode_namespace}/{target.pod}",
                    vnode=target.vnode,
                    reason=why,
                )
                return []
        generation = event.data.generation

        async def progress(step: workflow.StepProgress) -> None:
            update = VNodeSetupProgressed(
                generation=generation,
                vnode=step.vnode,
                step=step.step,
                status=step.status,
                message=step.message,
                attempt=step.attempt,
            )
            self._metrics.steps.labels(logic.metric_step(step.step), step.status).inc()
            key = f"{step.vnode}/{step.step}/{step.status}/{step.attempt}"
            await self._publisher.publish(event.follow(update, now=self._clock(), key=key))

        runner = workflow.StepRunner(self._exec, progress, self._settings.step_attempts, self._settings.step_backoff_s)
        with self._metrics.bootstrap_seconds.time():
            timeouts = workflow.Timeouts(self._settings.control_plane_timeout_s, self._settings.nodes_ready_timeout_s)
            done = await workflow.bootstrap(runner, plan, timeouts)
        try:
            # The stages after this one trust certificate data for this server only.
            api_server = inner_credentials(done.kubeconfig, server=None).server
        except KubeconfigRefused as refused:
            raise PermanentError(f"the master's admin kubeconfig: {refused}", reason=Reason.KUBECONFIG_REFUSED) from None
        secret = admin_kubeconfig_secret_name(name)
        await self._host.store_kubeconfig(obj, vnode_namespace, secret, done.kubeconfig)
        ready = ClusterKubernetesReady(
            generation=generation,
            kubernetes_version=done.server_version,
            kubeconfig_secret=secret,
            api_server=api_server,
            nodes=[plan.master.vnode, *(w.vnode for w in plan.workers)],
        )
        return [event.follow(ready, now=self._clock())]

    async def _not_the_vnode(self, target: workflow.VNodeTarget, cluster_uid: str) -> str | None:
        pod, controller = await self._host.pod_and_controller(target.namespace, target.pod)
        if pod is None:
            return "it does not exist"
        return logic.foreign_pod(
            pod, controller, cluster_uid=cluster_uid, vnode=target.vnode, namespace=target.namespace
        )



# Each step's progress goes out as it happens, while the handler still runs.
PROGRESS = Publishes.of("vnodes_ready, step by step", VNodeSetupProgressed)
TOPOLOGY = declare("bootstrap", BootstrapHandlers, publishers=(PROGRESS,))

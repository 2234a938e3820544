"""cluster.kubernetes.ready -> install Kubeflow (when the cluster asks for it) -> cluster.ready."""

from __future__ import annotations

from typing import Any

import structlog

from libs.api import admin_kubeconfig_secret_name, kubeflow_user_secret_name
from libs.events import Envelope, PermanentError, Publisher, Publishes, Reason, declare, subscriber
from libs.events.catalog import ClusterKubernetesReady, ClusterReady, KubeflowProgressed
from libs.events.consumer import Clock
from libs.kube.inner import KubeconfigRefused
from libs.kube.vnodes import platform_namespace
from services.kubeflow import logic, workflow
from services.kubeflow.adapters import manifests
from services.kubeflow.adapters.host import HostCluster
from services.kubeflow.adapters.inner import InnerCluster
from services.kubeflow.adapters.metrics import KubeflowMetrics
from services.kubeflow.settings import KubeflowSettings, ManifestSources

log = structlog.get_logger(__name__)

KUBECONFIG_KEY = "kubeconfig"


class KubeflowHandlers:
    def __init__(
        self,
        *,
        host: HostCluster,
        settings: KubeflowSettings,
        sources: ManifestSources,
        publisher: Publisher,
        metrics: KubeflowMetrics,
        clock: Clock,
    ):
        self._host = host
        self._settings = settings
        self._sources = sources
        self._publisher = publisher
        self._metrics = metrics
        self._clock = clock

    @subscriber(ClusterKubernetesReady, emits=(ClusterReady,))
    async def kubernetes_ready(self, event: Envelope[ClusterKubernetesReady]) -> list[Envelope[Any]]:
        namespace, name = event.cluster_id.split("/", 1)
        generation = event.data.generation
        vk8s = await self._host.vk8s(namespace, name)
        if vk8s is None:
            log.info("Skipping Kubeflow: the cluster is gone")
            return []
        # The Secret bootstrap made for this cluster, whatever the event names.
        secret = admin_kubeconfig_secret_name(name)
        if event.data.kubeconfig_secret != secret:
            log.error(
                "Refused cluster.kubernetes.ready: it names another Secret than the cluster's kubeconfig",
                named=event.data.kubeconfig_secret,
                expected=secret,
            )
            return []
        kubeflow = vk8s.spec.kubeflow
        if kubeflow is None:
            return [event.follow(ClusterReady(generation=generation), now=self._clock())]
        release = vk8s.spec.kubeflow_version()
        if release is None:
            raise PermanentError(
                f"no Kubeflow release is compatible with Kubernetes {vk8s.spec.kubernetes_version()}",
                reason=Reason.NO_COMPATIBLE_KUBEFLOW,
            )
        source = self._sources.for_release(release)
        if source is None:
            raise PermanentError(f"no manifest source is configured for Kubeflow {release}", reason=Reason.NO_MANIFEST_SOURCE)

        objects = await manifests.load(source, kubectl=self._settings.kubectl, cache_dir=self._settings.git_cache_dir)
        ref = kubeflow.password_secret_ref
        password = (
            kubeflow.password.get_secret_value()
            if kubeflow.password is not None and ref is None
            else await self._host.secret_value(
                namespace, ref.name if ref else kubeflow_user_secret_name(name), ref.key if ref else "password"
            )
        )
        plan = workflow.InstallPlan(
            objects=objects,
            user=workflow.User(email=kubeflow.email, password=password, user_id=logic.user_id(kubeflow.email)),
            ui_node_port=logic.ui_node_port(vk8s.spec.ports),
            rounds=self._settings.apply_rounds,
            round_delay_s=self._settings.round_delay_s,
            ready_timeout_s=self._settings.ready_timeout_s,
            poll_interval_s=self._settings.poll_interval_s,
            bcrypt_rounds=self._settings.bcrypt_rounds,
            wait_for_available=self._settings.wait_for_available,
        )
        uid = (vk8s.metadata.model_extra or {}).get("uid")
        # The platform's Secret, never the tenant's copy.
        kubeconfig_namespace = platform_namespace(namespace, name)
        kubeconfig = await self._host.secret_value(kubeconfig_namespace, secret, KUBECONFIG_KEY, cluster_uid=uid or "")

        async def progress(step: str, ready: int, total: int, message: str) -> None:
            update = KubeflowProgressed(
                generation=generation, release=release, step=step, ready=ready, total=total, message=message
            )
            await self._publisher.publish(event.follow(update, now=self._clock(), key=f"{step}/{ready}/{total}/{message}"))

        inner_cluster = InnerCluster(kubeconfig, event.data.api_server, self._settings.inner_proxy_url)
        with self._metrics.install_seconds.labels(release).time():
            try:
                async with inner_cluster as inner:
                    unavailable = await workflow.install(inner, plan, progress)
            except KubeconfigRefused as refused:
                message = f"Secret {kubeconfig_namespace}/{secret}: {refused}"
                raise PermanentError(message, reason=Reason.KUBECONFIG_REFUSED) from None
        self._metrics.installs.labels(release).inc()
        ready = ClusterReady(generation=generation, kubeflow_release=release, kubeflow_unavailable=unavailable)
        return [event.follow(ready, now=self._clock())]


# Each round's progress goes out as it happens, while the handler still runs.
PROGRESS = Publishes.of("kubernetes_ready, round by round", KubeflowProgressed)
TOPOLOGY = declare("kubeflow", KubeflowHandlers, publishers=(PROGRESS,))

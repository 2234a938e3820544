"""The real tier as the supervisor drives it: enter the namespaces, start the nodes, forward the
apiserver, provision volumes, and remove every container on the way out."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from kubernetes.aio import client

from vk8s.testbed import rest
from vk8s.testbed.certs import APISERVER_KUBELET_CLIENT, Pki
from vk8s.testbed.config import HOST_POD_NETWORK, LOOPBACK, NODE_NETWORK, VNODE_IP_POOL, FleetSpec, StateLayout
from vk8s.testbed.errors import ComponentFailed, TestbedError
from vk8s.testbed.nodes import node_labels
from vk8s.testbed.processes import ManagedProcess, ProcessSpec
from vk8s.testbed.real import forwarder, namespaces, node, preflight, sweep
from vk8s.testbed.real.volumes import Provisioner

log = logging.getLogger(__name__)

Launch = Callable[[ProcessSpec], Awaitable[ManagedProcess]]
_SOCKET_TIMEOUT = 60.0


def host_images(bin_dir: Path, kubernetes_version: str, vnode_versions: tuple[str, ...] = ()) -> dict[str, Path]:
    """ref -> OCI archive of what every real node imports: the pause image kubeadm names, the
    toolbox, and the vNode images (plain and GPU) of `vnode_versions`."""
    from vk8s.images.builders import kubeadm_image_refs, pause_image, toolbox_image
    from vk8s.images.errors import ImageBuildError

    version = f"v{kubernetes_version.removeprefix('v')}"
    try:
        pause_ref = next(ref for ref in kubeadm_image_refs(bin_dir, version) if "/pause:" in ref)
        toolbox_ref, toolbox = toolbox_image()
        images = {pause_ref: pause_image(pause_ref, version), toolbox_ref: toolbox}
        for vnode_version in vnode_versions:
            images |= vnode_images(vnode_version, testbed_bin=bin_dir, testbed_version=version)
    except ImageBuildError as exc:
        raise TestbedError(f"cannot build the real tier's images: {exc}") from exc
    return images


def vnode_images(kubernetes_version: str, *, testbed_bin: Path, testbed_version: str) -> dict[str, Path]:
    """The kink images of a Kubernetes release (plain and GPU), with kubeadm's images and the
    addons preloaded. The testbed's release reuses its binaries; others are built by
    deploy/kubernetes/build.sh."""
    from vk8s.images.builders import (
        addon_image_refs,
        build_addon_image,
        build_host_images,
        kubeadm_image_refs,
        toolbox_ref,
    )
    from vk8s.images.cache import images_dir
    from vk8s.images.kink import build_kink_image, kink_ref
    from vk8s.images.progress import BuildSteps

    version = f"v{kubernetes_version.removeprefix('v')}"
    bin_dir = testbed_bin if version == testbed_version else kubernetes_binaries(version)
    host_refs = [*kubeadm_image_refs(bin_dir, version), toolbox_ref()]
    addon_refs = [ref for ref in addon_image_refs(version) if ref not in host_refs]
    kinks = {kink_ref(version, gpu): gpu for gpu in (False, True)}
    steps = BuildSteps(f"vNode images of Kubernetes {version}", [*host_refs, *addon_refs, *kinks])
    steps.announce()
    preload = build_host_images(bin_dir, version, steps)
    preload |= {ref: steps.run(ref, functools.partial(build_addon_image, ref)) for ref in addon_refs}
    out = images_dir() / "kink"
    return {
        ref: steps.run(ref, functools.partial(build_kink_image, bin_dir, version, preload, gpu, out))
        for ref, gpu in kinks.items()
    }


def kubernetes_binaries(version: str) -> Path:
    script = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes" / "build.sh"
    result = subprocess.run(["bash", str(script), version.removeprefix("v")], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise TestbedError(f"{script} {version} failed with {result.returncode}; its output is above")
    return Path(result.stdout.strip().splitlines()[-1])


class RealTier:
    """Made before the event loop starts (`enter`), used by the supervisor once it runs."""

    def __init__(self, layout: StateLayout, fleet: FleetSpec, bin_dir: Path, images: dict[str, Path]) -> None:
        self.layout = layout
        self.fleet = fleet
        self.bin_dir = bin_dir
        self.images = images
        self.nodes = node.real_nodes(layout, fleet)
        self.cgroup = node.cgroup_root(layout)
        self._listener: socket.socket | None = None
        self._proxy: socket.socket | None = None

    @property
    def advertise_address(self) -> str:
        return namespaces.gateway(NODE_NETWORK)

    @property
    def apiserver_port(self) -> int:
        assert self._listener is not None, "enter() first"
        port: int = self._listener.getsockname()[1]
        return port

    def enter(self) -> None:
        """Binds the apiserver's loopback port here, then moves this process into the testbed's
        namespaces and its cgroup (so everything it starts can be found and removed)."""
        if reason := preflight.problem():
            raise TestbedError(f"this machine cannot run the real tier: {reason}; `--runtime kwok` works here")
        # What a crashed testbed in this state directory left.
        sweep.sweep(self.cgroup)
        self._listener = forwarder.bind_loopback(0)
        self._proxy = forwarder.bind_loopback(0)
        namespaces.enter_private_namespaces()
        supervisor_cgroup = namespaces.CGROUP_ROOT / "pids" / self.cgroup.lstrip("/") / "supervisor"
        supervisor_cgroup.mkdir(parents=True, exist_ok=True)
        (supervisor_cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")
        namespaces.create_bridge([n.address for n in self.nodes])

    @property
    def proxy_url(self) -> str:
        """Where clients on the machine reach addresses inside the testbed (HTTP CONNECT)."""
        assert self._proxy is not None, "enter() first"
        return f"http://{LOOPBACK}:{self._proxy.getsockname()[1]}"

    async def forward(self) -> None:
        """The apiserver's forwarder and the proxy, until cancelled."""
        assert self._listener is not None and self._proxy is not None, "enter() first"
        await asyncio.gather(
            forwarder.serve(self._listener, LOOPBACK, self.apiserver_port),
            forwarder.serve_connect(self._proxy, (NODE_NETWORK, HOST_POD_NETWORK, VNODE_IP_POOL)),
        )

    async def start_nodes(self, api: client.ApiClient, launch: Launch, pki: Pki, server: str) -> list[ManagedProcess]:
        """containerd with the images imported, then the kubelet and the GPU plugin, per node; returns the kubelets."""
        # As kubeadm: the apiserver's client identity may use every kubelet's API (exec, logs).
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "vk8s-testbed:apiserver-kubelet-client"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": APISERVER_KUBELET_CLIENT}],
        }
        await rest.create_or_keep(api, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
        cni_bin = node.write_cni_bin(self.layout.root / "cni-bin")
        pause = next(ref for ref in self.images if "/pause:" in ref)

        async def start(real: node.RealNode) -> ManagedProcess:
            await asyncio.to_thread(
                node.prepare, real, self.layout, self.fleet, pki, server=server, cni_bin=cni_bin, pause_image=pause
            )
            containerd = await launch(node.containerd_spec(real))
            await _wait_for_socket(real.containerd_socket, containerd)
            started = time.monotonic()
            await asyncio.to_thread(node.import_images, real, list(self.images.values()))
            log.info("%s: %d images imported in %.1fs", real.name, len(self.images), time.monotonic() - started)
            if self.fleet.gpus_per_node:
                await launch(node.gpu_plugin_spec(real, containerd.pid, self.bin_dir, self.fleet.gpus_per_node))
            labels = node_labels(self.fleet, real.index)
            return await launch(node.kubelet_spec(real, containerd.pid, self.bin_dir, labels))

        return list(await asyncio.gather(*(start(real) for real in self.nodes)))

    async def run_controllers(self, api: client.ApiClient) -> None:
        await Provisioner(api, self.layout.volumes).run()

    def remove_containers(self) -> None:
        # Out of the testbed's cgroup first, so all of it can go.
        (namespaces.CGROUP_ROOT / "pids" / "cgroup.procs").write_text(f"{os.getpid()}\n")
        if left := sweep.kill_and_remove(self.cgroup, spare=os.getpid()):
            log.warning("Left after stopping the real tier: %s", "; ".join(left))


async def _wait_for_socket(path: Path, process: ManagedProcess) -> None:
    deadline = time.monotonic() + _SOCKET_TIMEOUT
    while not path.exists():
        if not process.running:
            raise ComponentFailed(f"{process.spec.name} exited; log {process.log_path}:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise ComponentFailed(f"{process.spec.name} made no socket in {_SOCKET_TIMEOUT:.0f}s")
        await asyncio.sleep(0.05)

"""The testbed supervisor: starts the components in order, waits until each serves, keeps them running.

etcd + kube-apiserver -> kube-controller-manager + kube-scheduler, CRDs + nodes -> kwok -> sandboxes.
The supervisor holds an exclusive lock on the pid file for its whole life, so one state directory
never hosts two testbeds, and writes the ready file only once everything serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

import aiohttp

from vk8s.testbed import components, kwok
from vk8s.testbed.certs import Pki, write_pki
from vk8s.testbed.config import START_TIMEOUT, FleetSpec, Ports, ReadyInfo, StateLayout, pinned_versions
from vk8s.testbed.errors import AlreadyRunning, ComponentFailed
from vk8s.testbed.node_sim.sandbox import NodeSim
from vk8s.testbed.nodes import node_manifests
from vk8s.testbed.processes import ManagedProcess, ProcessSpec
from vk8s.testbed.real.tier import RealTier, host_images

log = logging.getLogger(__name__)

_PORT_ATTEMPTS = 3


def acquire_pid_lock(layout: StateLayout) -> IO[str]:
    """Locks the pid file and returns it open; the lock lasts as long as the file stays open."""
    layout.root.mkdir(parents=True, exist_ok=True)
    handle = layout.pid_file.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyRunning(f"a testbed already runs in {layout.root}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def clear_state(layout: StateLayout) -> None:
    """Removes what a previous testbed left, except the locked pid file and the supervisor's own log."""
    for entry in layout.root.iterdir():
        if entry in (layout.pid_file, layout.supervisor_log):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def enter_real_tier(layout: StateLayout, fleet: FleetSpec, bin_dir: Path) -> RealTier:
    """Before the event loop: the real tier moves this process into the testbed's namespaces."""
    images = host_images(bin_dir, pinned_versions()["KUBERNETES_VERSION"], fleet.vnode_images)
    tier = RealTier(layout, fleet, bin_dir, images)
    tier.enter()
    return tier


class Supervisor:
    def __init__(
        self,
        layout: StateLayout,
        fleet: FleetSpec,
        bin_dir: Path,
        owner_pid: int | None = None,
        real_tier: RealTier | None = None,
    ) -> None:
        self.layout = layout
        self.fleet = fleet
        self.bin_dir = bin_dir
        # A test session that dies without stopping its testbed must not leave it running.
        self.owner_pid = owner_pid
        self.real_tier = real_tier
        self.ports = self._pick_ports()
        self.processes: dict[str, ManagedProcess] = {}
        self._stop = asyncio.Event()

    def _pick_ports(self) -> Ports:
        ports = Ports.pick_free()
        if self.real_tier is None:
            return ports
        # The apiserver listens inside the testbed on the port its forwarder holds outside.
        return ports.model_copy(update={"apiserver": self.real_tier.apiserver_port})

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[ReadyInfo], None] | None = None) -> None:
        """Starts everything, reports readiness, then serves until asked to stop or a component dies."""
        lock = acquire_pid_lock(self.layout)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            clear_state(self.layout)
            started = time.monotonic()
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(self._stop_all)
                if self.real_tier is not None:
                    stack.push_async_callback(_cancel, asyncio.create_task(self.real_tier.forward()))
                sandboxes = await self._start_on_free_ports(stack)
                ready = ReadyInfo(
                    supervisor_pid=os.getpid(),
                    kubeconfig=str(self.layout.kubeconfig),
                    server=components.apiserver_url(self.ports),
                    sandbox_root=str(self.layout.sandboxes),
                    proxy_url=self.real_tier.proxy_url if self.real_tier is not None else None,
                    ports=self.ports,
                    fleet=self.fleet,
                    components={name: process.pid for name, process in self.processes.items()},
                    started_seconds=round(time.monotonic() - started, 2),
                )
                self.layout.ready_file.write_text(ready.model_dump_json(indent=2))
                log.info("Testbed ready in %.1fs", ready.started_seconds)
                if on_ready is not None:
                    on_ready(ready)
                if self.owner_pid is not None:
                    owner = asyncio.create_task(_stop_when_gone(self.owner_pid, self))
                    stack.push_async_callback(_cancel, owner)
                await self._serve(sandboxes)
        finally:
            self.layout.ready_file.unlink(missing_ok=True)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            lock.close()

    async def _start_on_free_ports(self, stack: contextlib.AsyncExitStack) -> asyncio.Task[None]:
        # A port picked free can be taken before its component binds it (other testbeds, outgoing
        # connections); starting over on fresh ports is cheaper than failing.
        attempt = 1
        while True:
            try:
                return await self._start(stack)
            except ComponentFailed as exc:
                # Inside the real tier's own network namespace nothing else takes ports.
                if "address already in use" not in str(exc) or attempt == _PORT_ATTEMPTS or self.real_tier:
                    raise
                log.warning("A port was taken (%s); starting again on other ports", str(exc).splitlines()[0])
            await self._stop_all()
            self.processes.clear()
            clear_state(self.layout)
            self.ports = self._pick_ports()
            attempt += 1

    async def _start(self, stack: contextlib.AsyncExitStack) -> asyncio.Task[None]:
        """Brings every component up; returns the running sandbox controller."""
        layout = self.layout
        for directory in (layout.logs, layout.sandboxes, layout.kwok_home, layout.etcd_data):
            directory.mkdir(parents=True, exist_ok=True)
        layout.etcd_data.chmod(0o700)
        pki = write_pki(layout.pki)
        server = components.apiserver_url(self.ports)
        kubeconfigs = self._write_kubeconfigs(pki, server)
        kwok.write_config(layout.kwok_config)
        kwok_crds = kwok.crd_documents(components.KWOK_CRDS)

        # The apiserver retries etcd until it answers, so both start at once.
        etcd = await self._launch(components.etcd(self.bin_dir, layout, self.ports))
        advertise = self.real_tier.advertise_address if self.real_tier is not None else None
        apiserver = await self._launch(components.kube_apiserver(self.bin_dir, pki, self.ports, advertise))
        # Loading the Kubernetes client costs a second or more of CPU: spend it while they boot.
        from vk8s.testbed import cluster

        await self._wait(lambda: _http_ok(f"http://127.0.0.1:{self.ports.etcd_client}/health"), etcd, "etcd healthy")
        admin_tls = _client_tls(pki)
        await self._wait(lambda: _http_ok(f"{server}/readyz", admin_tls), apiserver, "kube-apiserver ready")

        api = await cluster.connect(layout.kubeconfig)
        stack.push_async_callback(api.close)
        kcm = await self._launch(
            components.kube_controller_manager(self.bin_dir, pki, self.ports, kubeconfigs["controller-manager"])
        )
        scheduler = await self._launch(components.kube_scheduler(self.bin_dir, self.ports, kubeconfigs["scheduler"]))
        mark = time.monotonic()
        # kwok watches Exec objects from its start, so their CRD must be served before it runs.
        crds_applied = cluster.apply_crds(api, kwok_crds + cluster.project_crds())
        if self.real_tier is None:
            await asyncio.gather(crds_applied, cluster.create_nodes(api, node_manifests(self.fleet)))
            log.info("CRDs established and %d nodes created after %.2fs", self.fleet.nodes, time.monotonic() - mark)
        else:
            # Real kubelets register their nodes themselves.
            await crds_applied
            kubelets = await self.real_tier.start_nodes(api, self._launch, pki, server)
            stack.push_async_callback(_cancel, asyncio.create_task(self.real_tier.run_controllers(api)))
        kwok_process = await self._launch(components.kwok(self.bin_dir, layout, pki, self.ports, kubeconfigs["kwok"]))
        node_sim = NodeSim(bin_dir=self.bin_dir, etcd_url=f"http://127.0.0.1:{self.ports.etcd_client}")
        sandboxes = asyncio.create_task(cluster.SandboxController(api, layout.sandboxes, node_sim).run())
        stack.push_async_callback(_cancel, sandboxes)

        insecure = _insecure_tls()
        kcm_health = f"https://127.0.0.1:{self.ports.controller_manager}/healthz"
        scheduler_health = f"https://127.0.0.1:{self.ports.scheduler}/healthz"
        await asyncio.gather(
            self._wait(lambda: _http_ok(kcm_health, insecure), kcm, "kube-controller-manager healthy"),
            self._wait(lambda: _http_ok(scheduler_health, insecure), scheduler, "kube-scheduler healthy"),
            self._wait(
                lambda: cluster.nodes_ready(api, self.fleet.node_names(), self.fleet.gpus_per_node),
                kwok_process if self.real_tier is None else kubelets[0],
                "nodes Ready",
            ),
            # Pods need their namespace's default ServiceAccount, which the controller-manager makes.
            self._wait(
                lambda: cluster.service_account_exists(api, "default", "default"), kcm, "default ServiceAccount made"
            ),
        )
        return sandboxes

    def _write_kubeconfigs(self, pki: Pki, server: str) -> dict[str, Path]:
        layout = self.layout
        components.write_kubeconfig(
            layout.kubeconfig, server=server, ca=pki.ca.cert, user="vk8s-admin", credentials=pki.admin
        )
        identities = {
            "controller-manager": ("system:kube-controller-manager", pki.controller_manager),
            "scheduler": ("system:kube-scheduler", pki.scheduler),
            "kwok": ("vk8s-kwok", pki.kwok),
        }
        return {
            name: components.write_kubeconfig(
                layout.component_kubeconfigs / f"{name}.conf",
                server=server,
                ca=pki.ca.cert,
                user=user,
                credentials=pair,
            )
            for name, (user, pair) in identities.items()
        }

    async def _launch(self, spec: ProcessSpec) -> ManagedProcess:
        process = ManagedProcess(spec, self.layout.logs)
        await process.start()
        self.processes[spec.name] = process
        return process

    async def _wait(self, check: Callable[[], Awaitable[bool]], process: ManagedProcess, what: str) -> None:
        """Polls `check` until it passes; fails at once if the component it waits on has exited."""
        started = time.monotonic()
        deadline = started + START_TIMEOUT
        while not await check():
            if not process.running:
                raise ComponentFailed(
                    f"{process.spec.name} exited with {process.returncode}; "
                    f"log {process.log_path}:\n{process.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ComponentFailed(
                    f"{process.spec.name} not ready after {START_TIMEOUT:.0f}s; log {process.log_path}"
                )
            await asyncio.sleep(0.1)
        log.info("%s after %.2fs", what, time.monotonic() - started)

    async def _serve(self, sandboxes: asyncio.Task[None]) -> None:
        watchers = {asyncio.create_task(p.wait(), name=name) for name, p in self.processes.items()}
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({*watchers, stop, sandboxes}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*watchers, stop):
                task.cancel()
        if stop not in done:
            # Ctrl-C in a terminal signals the components too; their exit may beat our own handler.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)
        if self._stop.is_set():
            log.info("Stopping the testbed")
            return
        if sandboxes in done:
            raise ComponentFailed("the sandbox controller stopped") from sandboxes.exception()
        failed = next(task for task in done if task in watchers)
        process = self.processes[failed.get_name()]
        raise ComponentFailed(f"{process.spec.name} exited; log {process.log_path}:\n{process.log_tail()}")

    async def _stop_all(self) -> None:
        # Reverse start order: etcd goes last so the others can still shut down cleanly.
        for process in reversed(list(self.processes.values())):
            await process.stop()
        if self.real_tier is not None:
            # Containers outlive their kubelet and containerd (the shims keep them).
            await asyncio.to_thread(self.real_tier.remove_containers)


async def _stop_when_gone(pid: int, supervisor: Supervisor) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info("Owner process %d is gone", pid)
            supervisor.request_stop()
            return
        await asyncio.sleep(1)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _client_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
    return context


def _insecure_tls() -> ssl.SSLContext:
    # controller-manager and scheduler serve /healthz with a self-signed certificate made at start.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _http_ok(url: str, tls: ssl.SSLContext | None = None) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(url, ssl=tls if tls is not None else True) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False

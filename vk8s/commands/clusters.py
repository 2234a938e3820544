"""`vk8s create | get | delete`: clusters as a user sees them."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from libs.api import ManifestSyntaxError, load_documents, validate_document
from vk8s import client as vk8s_client
from vk8s.progress import describe, outcome

_endpoint_options = [
    click.option("--nats-url", envvar="NATS_URL", help="NATS to publish on [default: the local stack's]."),
    click.option("--kubeconfig", envvar="KUBECONFIG", help="Host cluster [default: the local stack's testbed]."),
]


def endpoint_options(function: Any) -> Any:
    for option in reversed(_endpoint_options):
        function = option(function)
    return function


async def start_watch(nc: Any, cluster_id: str, started: float, timeout_s: float, ends: set[str]) -> asyncio.Task[str]:
    """Subscribes to the cluster's events and returns once the subscription is live, so nothing
    published afterwards is missed; the task prints each event until one of `ends` (its result)."""
    live = asyncio.Event()
    watcher = asyncio.create_task(_watch_until(nc, cluster_id, started, timeout_s, ends, live))
    subscribed = asyncio.create_task(live.wait())
    await asyncio.wait((watcher, subscribed), return_when=asyncio.FIRST_COMPLETED)
    subscribed.cancel()
    return watcher


async def _watch_until(
    nc: Any, cluster_id: str, started: float, timeout_s: float, ends: set[str], live: asyncio.Event
) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            async for event in vk8s_client.follow(nc, cluster_id, live=live):
                click.echo(f"[{time.monotonic() - started:7.1f}s] {describe(event)}")
                if (result := outcome(event)) in ends:
                    return result
    except TimeoutError:
        return "TimedOut"
    return "Interrupted"


@click.command("create")
@click.option("-f", "--filename", "files", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "--namespace", default=None, help="Namespace for objects that name none [default: default].")
@click.option("--wait/--no-wait", default=False, help="Show live progress until Running or Failed.")
@click.option("--timeout", "timeout_s", type=float, default=1800.0, show_default=True, help="Seconds to wait.")
@endpoint_options
def create_command(files: tuple[Path, ...], namespace: str | None, wait: bool, timeout_s: float, nats_url: str | None, kubeconfig: str | None) -> None:
    """Request the clusters in FILE(s) by publishing cluster.requested."""
    clusters = []
    for path in files:
        try:
            documents = load_documents(path.read_text())
        except ManifestSyntaxError as error:
            raise click.ClickException(f"{path}: {error}") from None
        for document in documents:
            content = document.content
            if namespace and isinstance(content, dict):
                content.setdefault("metadata", {}).setdefault("namespace", namespace)
            result = validate_document(content)
            for problem in result.warnings:
                click.echo(f"{path}#{document.position}: warning: {problem.path}: {problem.message}", err=True)
            if not result.ok or result.vk8s is None:
                for problem in result.errors:
                    click.echo(f"{path}#{document.position}: {problem.path}: {problem.message}", err=True)
                sys.exit(1)
            clusters.append(result.vk8s)
    endpoints = vk8s_client.Endpoints.resolve(nats_url, kubeconfig)

    async def run() -> int:
        async with vk8s_client.connected(endpoints) as (nc, api):
            failed = 0
            for vk8s in clusters:
                started = time.monotonic()
                await vk8s_client.ensure_password_secret(api, vk8s)
                watcher = (
                    await start_watch(nc, vk8s.cluster_id, started, timeout_s, {"Running", "Failed"}) if wait else None
                )
                request = await vk8s_client.publish_request(nc, vk8s)
                click.echo(f"vk8s/{vk8s.metadata.name} requested (event {request.id})", err=True)
                await vk8s_client.adopt_password_secret(api, vk8s)
                if watcher is not None:
                    result = await watcher
                    click.echo(f"vk8s/{vk8s.metadata.name}: {result} after {time.monotonic() - started:.1f}s")
                    failed += result != "Running"
            return 1 if failed else 0

    sys.exit(asyncio.run(run()))


@click.command("get")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table", show_default=True)
@endpoint_options
def get_command(name: str | None, namespace: str, all_namespaces: bool, output: str, nats_url: str | None, kubeconfig: str | None) -> None:
    """Show clusters; `-o yaml` includes the status with its condition history."""
    endpoints = vk8s_client.Endpoints.resolve(nats_url, kubeconfig)

    async def run() -> list[dict[str, Any]]:
        async with vk8s_client.connected(endpoints) as (_, api):
            if name:
                obj = await vk8s_client.get_object(api, name, namespace)
                if obj is None:
                    raise click.ClickException(f'vk8s "{name}" not found in namespace "{namespace}"')
                return [obj]
            return await vk8s_client.list_objects(api, None if all_namespaces else namespace)

    objects = asyncio.run(run())
    if output == "yaml":
        click.echo(yaml.safe_dump(objects[0] if name else {"items": objects}, sort_keys=False), nl=False)
    elif output == "json":
        click.echo(json.dumps(objects[0] if name else {"items": objects}, indent=2))
    else:
        rows = [("NAMESPACE", "NAME", "PHASE", "NODES", "GPUS", "MESSAGE")]
        for obj in objects:
            status = obj.get("status") or {}
            rows.append((
                obj["metadata"]["namespace"], obj["metadata"]["name"], status.get("phase", ""),
                str(status.get("nodes", len(obj["spec"].get("nodes", [])))), str(status.get("gpus", "")),
                status.get("message", ""),
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@click.command("delete")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--wait/--no-wait", default=False, help="Wait until everything the cluster held is free.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True)
@endpoint_options
def delete_command(name: str, namespace: str, wait: bool, timeout_s: float, nats_url: str | None, kubeconfig: str | None) -> None:
    """Delete a cluster: vNodes, volumes, IPs and GPU reservations are freed, then the object goes."""
    endpoints = vk8s_client.Endpoints.resolve(nats_url, kubeconfig)

    async def run() -> int:
        async with vk8s_client.connected(endpoints) as (nc, api):
            started = time.monotonic()
            cluster_id = vk8s_client.cluster_id_of(namespace, name)
            watcher = await start_watch(nc, cluster_id, started, timeout_s, {"Deleted"}) if wait else None
            if not await vk8s_client.delete_object(api, name, namespace):
                if watcher:
                    watcher.cancel()
                raise click.ClickException(f'vk8s "{name}" not found in namespace "{namespace}"')
            click.echo(f"vk8s/{name} deletion requested", err=True)
            if watcher is None:
                return 0
            result = await watcher
            while await vk8s_client.get_object(api, name, namespace) is not None:
                if time.monotonic() - started > timeout_s:
                    result = "TimedOut"
                    break
                await asyncio.sleep(0.5)
            click.echo(f"vk8s/{name}: {result} after {time.monotonic() - started:.1f}s")
            return 0 if result == "Deleted" else 1

    sys.exit(asyncio.run(run()))

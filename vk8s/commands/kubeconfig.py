"""`vk8s kubeconfig NAME`: a virtual cluster's admin kubeconfig, usable from this shell."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import click
import yaml
from kubernetes.aio import client

from libs.kube import kube_client, not_found
from vk8s.local.stack import StackLayout, read_info

SECRET_KEY = "kubeconfig"


def reachable_from_here(kubeconfig: dict[str, Any], proxy_url: str | None) -> dict[str, Any]:
    """With the real tier, vNode addresses exist only inside the testbed: go through its proxy
    (the server address stays, so the API server's certificate still matches)."""
    if proxy_url:
        for cluster in kubeconfig.get("clusters") or []:
            cluster["cluster"]["proxy-url"] = proxy_url
    return kubeconfig


async def _read_secret(host_kubeconfig: str | None, namespace: str, name: str) -> str | None:
    api = await kube_client(host_kubeconfig)
    try:
        secret = await client.CoreV1Api(api).read_namespaced_secret(f"{name}-kubeconfig", namespace)
    except client.ApiException as error:
        if not_found(error):
            return None
        raise
    finally:
        await api.close()
    return base64.b64decode((secret.data or {}).get(SECRET_KEY, "")).decode() or None


def render(host_kubeconfig: str | None, namespace: str, name: str) -> str:
    """The admin kubeconfig of vk8s/NAME, reachable from this machine; ClickException if none yet."""
    from vk8s.testbed.lifecycle import ready_for_kubeconfig

    text = asyncio.run(_read_secret(host_kubeconfig, namespace, name))
    if text is None:
        raise click.ClickException(f"vk8s/{name} in {namespace} has no kubeconfig yet (Secret {name}-kubeconfig)")
    testbed = ready_for_kubeconfig(Path(host_kubeconfig)) if host_kubeconfig else None
    document = reachable_from_here(yaml.safe_load(text), testbed.proxy_url if testbed else None)
    return yaml.safe_dump(document, sort_keys=False)


def write(path: Path, rendered: str) -> None:
    path.write_text(rendered)
    os.chmod(path, 0o600)


@click.command("kubeconfig")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write it here (mode 0600).")
@click.option("--kubeconfig", "host_kubeconfig", envvar="KUBECONFIG", help="Host cluster [default: the local stack's].")
def kubeconfig_command(name: str, namespace: str, output: Path | None, host_kubeconfig: str | None) -> None:
    """Print (or write) the admin kubeconfig of virtual cluster NAME."""
    if host_kubeconfig is None and (info := read_info(StackLayout())) is not None:
        host_kubeconfig = info.kubeconfig
    rendered = render(host_kubeconfig, namespace, name)
    if output is None:
        click.echo(rendered, nl=False)
        return
    write(output, rendered)
    click.echo(f"wrote {output}", err=True)

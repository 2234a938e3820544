"""`python -m vk8s.images build|list`: archive paths or refs on stdout, progress on stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from vk8s.images.builders import build_host_images, kubeadm_image_refs, toolbox_ref
from vk8s.images.cache import link_into_place
from vk8s.images.errors import ImageBuildError

VERSION = click.option("--kubernetes-version", required=True, help="e.g. 1.36.3")
BIN_DIR = click.option(
    "--bin-dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="Holds kubeadm, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy.",
)


@click.group()
def main() -> None:
    """Container images as OCI archives, cached under ${VK8S_CACHE_DIR:-~/.cache/vk8s}/images."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")


@main.command()
@VERSION
@BIN_DIR
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also place the archives here (hard links where possible), as <name>.tar.",
)
def build(kubernetes_version: str, bin_dir: Path, out: Path | None) -> None:
    """Builds (or reuses) kubeadm's images and the toolbox; prints one archive path per line."""
    try:
        images = build_host_images(bin_dir, kubernetes_version)
    except ImageBuildError as exc:
        raise click.ClickException(str(exc)) from exc
    for archive in images.values():
        if out:
            link_into_place(archive, out / archive.name)
        click.echo(out / archive.name if out else archive)


@main.command(name="list")
@VERSION
@BIN_DIR
def list_refs(kubernetes_version: str, bin_dir: Path) -> None:
    """Prints the refs `build` makes, one per line, without building."""
    try:
        refs = [*kubeadm_image_refs(bin_dir, kubernetes_version), toolbox_ref()]
    except ImageBuildError as exc:
        raise click.ClickException(str(exc)) from exc
    for ref in refs:
        click.echo(ref)


if __name__ == "__main__":
    main()

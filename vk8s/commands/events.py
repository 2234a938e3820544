"""`vk8s events`: the event contract (JSON Schemas) and publishing a request by hand."""

from __future__ import annotations

import json
from pathlib import Path

import click

from libs.events import REGISTRY
from libs.events.permissions import chart_permissions
from services.topology import SERVICES


@click.group("events")
def events_command() -> None:
    """The pipeline's event contract."""


@events_command.command("list")
def list_subjects() -> None:
    """List the event subjects and their schema versions."""
    for subject in REGISTRY.subjects():
        model = REGISTRY.model_for(subject)
        doc = " ".join((model.__doc__ or "").split())
        click.echo(f"{subject}\tv{model.version}\t{doc}")


@events_command.command("schema")
@click.argument("subject", required=False)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="Write one <subject>.json per event here.")
def schema(subject: str | None, out_dir: Path | None) -> None:
    """Print the JSON Schema of SUBJECT (all subjects, keyed by subject, when omitted)."""
    if subject is not None and subject not in REGISTRY.subjects():
        raise click.UsageError(f"unknown subject {subject!r}; known: {', '.join(REGISTRY.subjects())}")
    subjects = [subject] if subject else REGISTRY.subjects()
    schemas = {s: REGISTRY.json_schema(s) for s in subjects}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, body in schemas.items():
            (out_dir / f"{name}.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {len(schemas)} schemas to {out_dir}")
        return
    click.echo(json.dumps(schemas[subject] if subject else schemas, indent=2, sort_keys=True))


@events_command.command("permissions")
def permissions() -> None:
    """Print the NATS permissions of every service and of a requester, which the Helm chart renders its
    users from: `vk8s events permissions > deploy/helm/vk8s/files/nats-permissions.json` (a test checks)."""
    click.echo(json.dumps(chart_permissions(SERVICES), indent=2, sort_keys=True))

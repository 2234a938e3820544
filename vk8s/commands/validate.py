"""`vk8s validate`: checks Vk8s manifests offline, with the rules the gateway applies."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from libs.api.documents import ManifestSyntaxError, load_documents
from libs.api.validation import ROOT_PATH, Severity, validate_document

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_USAGE = 2  # also click's own status for usage errors


def _host_cidr(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return tuple(values)


@click.command("validate")
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    metavar="FILE",
    help="Manifest to check; repeat for more files; '-' reads standard input.",
)
@click.option(
    "--host-cidr",
    "host_cidrs",
    multiple=True,
    callback=_host_cidr,
    metavar="CIDR",
    help="A network of the host cluster (pods, services, nodes) the inner cluster must not overlap.",
)
def validate_command(files: tuple[str, ...], host_cidrs: tuple[str, ...]) -> None:
    """Check Vk8s manifests (YAML, several documents per file allowed).

    Prints one line per problem, errors on stdout and warnings on stderr:

    \b
        FILE[#N]: FIELD PATH: WHAT IS WRONG AND WHAT IS ALLOWED
        FILE[#N]: FIELD PATH: warning: ...

    #N is the 1-based position of the YAML document in FILE, shown only when FILE holds more
    than one document. YAML syntax errors print "line L, column C" in place of the field path.

    Exit status: 0 when every document is valid (warnings allowed), 1 when any document is
    invalid, 2 on a usage error or an unreadable file.
    """
    status = EXIT_VALID
    for name in files:
        try:
            text = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            click.echo(f"{name}: cannot read: {exc.strerror or exc}", err=True)
            status = EXIT_USAGE
            continue
        if not _check_file(name, text, host_cidrs) and status == EXIT_VALID:
            status = EXIT_INVALID
    sys.exit(status)


def _check_file(name: str, text: bytes, host_cidrs: Sequence[str]) -> bool:
    """Prints the file's problems; True when every document in it is valid."""
    try:
        documents = load_documents(text)
    except ManifestSyntaxError as exc:
        click.echo(f"{name}: {exc.location or ROOT_PATH}: {exc.problem}")
        return False
    if not documents:
        click.echo(f"{name}: {ROOT_PATH}: no document in the file; expected a Vk8s manifest")
        return False
    valid = True
    for document in documents:
        label = f"{name}#{document.position}" if len(documents) > 1 else name
        result = validate_document(document.content, host_cidrs=host_cidrs)
        for problem in result.problems:
            if problem.severity is Severity.WARNING:
                click.echo(f"{label}: {problem.path}: warning: {problem.message}", err=True)
            else:
                click.echo(f"{label}: {problem.path}: {problem.message}")
        valid = valid and result.ok
    return valid

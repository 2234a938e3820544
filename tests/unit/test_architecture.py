"""The layering rules in .importlinter hold, and they cover every service."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".importlinter"
# The `lint-imports` entry point, run by this interpreter so it sees this environment's packages.
LINT_IMPORTS = (sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()")
CONTRACT_PREFIX = "importlinter:contract:"
MODULE_KEYS = ("source_modules", "forbidden_modules", "allowed_importers", "protected_modules", "modules")
SERVICE_WILDCARD = "services.*."


def contracts() -> dict[str, configparser.SectionProxy]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return {s.removeprefix(CONTRACT_PREFIX): parser[s] for s in parser.sections() if s.startswith(CONTRACT_PREFIX)}


def service_packages() -> set[str]:
    return {f"services.{init.parent.name}" for init in (REPO / "services").glob("*/__init__.py")}


def has_module(package: str, name: str) -> bool:
    directory = REPO.joinpath(*package.split("."))
    return (directory / f"{name}.py").is_file() or (directory / name / "__init__.py").is_file()


def test_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [*LINT_IMPORTS, "--no-cache", "--no-logo", str(CONFIG)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_in_the_independence_contract() -> None:
    assert set(contracts()["services-independent"]["modules"].split()) == service_packages()


def test_every_service_has_the_modules_the_wildcard_contracts_name() -> None:
    """`services.*.logic` that matches nothing keeps its contract without checking anything, so a
    service whose pure module is named otherwise would escape every rule about logic."""
    tails = {
        expression.removeprefix(SERVICE_WILDCARD)
        for contract in contracts().values()
        for key in MODULE_KEYS
        for expression in contract.get(key, "").split()
        if expression.startswith(SERVICE_WILDCARD)
    }
    assert tails, "the contracts name no per-service modules"
    missing = [f"{s}.{t}" for s in sorted(service_packages()) for t in sorted(tails) if not has_module(s, t)]
    assert not missing, f"modules the contracts rely on do not exist: {missing}"

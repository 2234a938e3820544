"""`vk8s validate`: exit codes, one line per problem, warnings on stderr."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from tests.unit.api.conftest import EXAMPLES, valid_document
from vk8s.cli import main

LINE = re.compile(r"^(?P<file>[^:#]+)(#(?P<doc>\d+))?: (?P<path>[^:]+): (?P<message>.+)$")


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["validate", *args], input=stdin)


def write(tmp_path: Path, name: str, *documents: object) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return str(path)


def invalid_document() -> dict[str, object]:
    document = valid_document()
    document["spec"]["nodes"][1]["resources"]["requests"] = {"nvidia.com/gpu": 1}
    document["spec"]["kubeflow"]["version"] = "v1.4.0"
    return document


def test_seed_samples_are_valid_with_warnings_on_stderr() -> None:
    result = run("-f", str(EXAMPLES / "sample3.yaml"), "-f", str(EXAMPLES / "sample4.yaml"))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    warnings = result.stderr.splitlines()
    assert [match["file"] if (match := LINE.match(line)) else line for line in warnings] == [
        str(EXAMPLES / "sample3.yaml"), str(EXAMPLES / "sample4.yaml"),
    ]
    assert all(": spec.nodes[0].kubeflow.password: warning: " in line for line in warnings)
    assert "test!!22" not in result.output


def test_valid_file_prints_nothing(tmp_path: Path) -> None:
    result = run("-f", write(tmp_path, "ok.yaml", valid_document()))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_invalid_file_prints_one_line_per_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", invalid_document())
    result = run("-f", path)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f'{path}: spec.nodes[1].resources.limits["nvidia.com/gpu"]: request 1 differs from limit 2; nvidia.com/gpu '
        "cannot be overcommitted, so requests must equal limits (or set only one of them)",
        f"{path}: spec.kubeflow.version: Kubeflow v1.4.0 runs on Kubernetes 1.20, not 1.36; compatible with "
        "Kubernetes 1.36: v1.11.0",
    ]


def test_documents_are_numbered_in_multi_document_files(tmp_path: Path) -> None:
    path = write(tmp_path, "many.yaml", valid_document(), invalid_document())
    result = run("-f", path)
    assert result.exit_code == 1
    matches = [LINE.match(line) for line in result.stdout.splitlines()]
    lines = [match for match in matches if match is not None]
    assert lines and len(lines) == len(matches)
    assert {(match["file"], match["doc"]) for match in lines} == {(path, "2")}


def test_one_invalid_file_among_valid_ones_fails(tmp_path: Path) -> None:
    result = run("-f", write(tmp_path, "ok.yaml", valid_document()), "-f", write(tmp_path, "bad.yaml", invalid_document()))
    assert result.exit_code == 1
    assert all(line.startswith(str(tmp_path / "bad.yaml")) for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("text", "location", "fragment"),
    [
        ("apiVersion: v1\nkind: [Vk8s\n", "line 3, column 1", "invalid YAML"),
        ("a: b: c\n", "line 1, column 5", "mapping values are not allowed"),
        ("kind: Vk8s\nkind: Vk8s\n", "line 2, column 1", "duplicate key 'kind'"),
    ],
)
def test_yaml_syntax_errors_are_invalid(tmp_path: Path, text: str, location: str, fragment: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = run("-f", str(path))
    assert result.exit_code == 1
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"{path}: {location}: ") and fragment in line


@pytest.mark.parametrize("text", ["", "---\n", "# only a comment\n"])
def test_a_file_without_documents_is_invalid(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    result = run("-f", str(path))
    assert result.exit_code == 1
    assert result.stdout == f"{path}: (document): no document in the file; expected a Vk8s manifest\n"


def test_a_non_vk8s_document_is_invalid(tmp_path: Path) -> None:
    path = write(tmp_path, "cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    result = run("-f", path)
    assert result.exit_code == 1
    assert f"{path}: kind: not an allowed value (got 'ConfigMap'); allowed: 'Vk8s'" in result.stdout.splitlines()


def test_unreadable_files_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = run("-f", str(missing), "-f", write(tmp_path, "bad.yaml", invalid_document()))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{missing}: cannot read: ")
    assert result.stdout  # the readable file was still checked


def test_a_directory_is_unreadable(tmp_path: Path) -> None:
    assert run("-f", str(tmp_path)).exit_code == 2


@pytest.mark.parametrize("args", [[], ["-f"], ["--nope"], ["-f", "x.yaml", "--host-cidr", "not-a-cidr"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert run(*args).exit_code == 2


def test_host_cidr_option(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.yaml", valid_document())  # default networks 90.244.0.0/16, 90.96.0.0/12
    result = run("-f", path, "--host-cidr", "90.0.0.0/8")
    assert result.exit_code == 1
    assert f"{path}: spec.kubernetes.podNetworkCidr: 90.244.0.0/16 overlaps the host cluster's network 90.0.0.0/8" in (
        result.stdout
    )
    assert run("-f", path, "--host-cidr", "10.0.0.0/8").exit_code == 0


def test_reads_standard_input() -> None:
    result = run("-f", "-", stdin=yaml.safe_dump(invalid_document()))
    assert result.exit_code == 1
    assert result.stdout.startswith('-: spec.nodes[1].resources.limits["nvidia.com/gpu"]: ')


def test_installed_entry_point(tmp_path: Path) -> None:
    """The console script, as users run it."""
    executable = Path(sys.executable).with_name("vk8s")
    path = write(tmp_path, "bad.yaml", invalid_document())
    completed = subprocess.run(
        [str(executable), "validate", "-f", path, "-f", str(EXAMPLES / "sample3.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 1
    assert len(completed.stdout.splitlines()) == 2
    assert all(LINE.match(line) for line in completed.stdout.splitlines())
    assert "spec.nodes[0].kubeflow.password: warning: " in completed.stderr

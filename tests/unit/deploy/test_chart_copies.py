"""Helm packages only files inside the chart, so the CRD, the dashboards and the alert rules live there as
copies. Each copy must equal its source; the message says how to bring it back in line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.deploy.helm import CHART_DIR
from vk8s.testbed.config import REPO_ROOT

COPIES = (
    (REPO_ROOT / "deploy" / "crds", CHART_DIR / "crds", "*.yaml"),
    (REPO_ROOT / "deploy" / "grafana", CHART_DIR / "files" / "dashboards", "*.json"),
    (REPO_ROOT / "deploy" / "prometheus", CHART_DIR / "files" / "prometheus", "vk8s-alerts.yaml"),
)


@pytest.mark.parametrize(("source", "copy", "pattern"), COPIES, ids=["crds", "dashboards", "alert-rules"])
def test_chart_copy_equals_its_source(source: Path, copy: Path, pattern: str) -> None:
    sources = {path.name: path for path in source.glob(pattern)}
    copies = {path.name: path for path in copy.glob(pattern)}
    fix = f"run: rm -f {copy.relative_to(REPO_ROOT)}/{pattern} && cp {source.relative_to(REPO_ROOT)}/{pattern} {copy.relative_to(REPO_ROOT)}/"
    assert sources, f"nothing matches {source.relative_to(REPO_ROOT)}/{pattern}"
    assert sorted(copies) == sorted(sources), fix
    for name, path in sources.items():
        assert copies[name].read_bytes() == path.read_bytes(), (
            f"{copies[name].relative_to(REPO_ROOT)} differs from its source; {fix}"
        )

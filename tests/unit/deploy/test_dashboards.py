"""The Grafana dashboards: well-formed, on the shared data-source variable, every query valid PromQL, and
covering what docs/deploy.md promises (pipeline, GPUs, NATS lag, service health)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.referenced_metrics import DASHBOARDS_DIR, EXTERNAL_METRICS, dashboard_expressions, metric_names

DASHBOARDS = sorted(DASHBOARDS_DIR.glob("*.json"))
# Grafana's variables, replaced by something PromQL accepts before promtool parses a query.
_GRAFANA_SUBSTITUTES = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p["type"] != "row"]


def test_the_promised_dashboards_exist() -> None:
    assert {path.stem for path in DASHBOARDS} == {"vk8s-pipeline", "vk8s-gpus", "vk8s-nats", "vk8s-services"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] == path.stem and dashboard["title"].startswith("vk8s / ")
    assert dashboard["id"] is None, "a provisioned dashboard must not carry a database id"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["title"] and panel.get("description"), f"{path.name}: every panel says what it shows"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_queries_are_valid_promql(path: Path, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run `bash scripts/install-system-deps`")
    rules = []
    for index, (title, expression) in enumerate(dashboard_expressions(path)):
        for variable, value in _GRAFANA_SUBSTITUTES.items():
            expression = expression.replace(variable, value)
        expression = re.sub(r"\$\w+", "x", expression)
        rules.append({"record": f"dashboard_query_{index}", "expr": expression, "labels": {"panel": title}})
    file = tmp_path / "queries.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": path.stem, "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_external_metrics_are_charted_only_on_panels_that_say_so() -> None:
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            external = {
                n for t in panel["targets"] for n in metric_names(t["expr"]) if n in EXTERNAL_METRICS and n != "up"
            }
            if external:
                assert re.search(r"\(not a vk8s service\)", panel["description"]), (
                    f"{path.name}: {panel['title']} reads {external}"
                )


def test_pipeline_overview_covers_requests_time_to_running_stages_and_failures() -> None:
    names = {n for _, e in dashboard_expressions(DASHBOARDS_DIR / "vk8s-pipeline.json") for n in metric_names(e)}
    assert {
        "vk8s_gateway_requests_total",
        "vk8s_projector_time_to_running_seconds_bucket",
        "vk8s_projector_stage_duration_seconds_bucket",
        "vk8s_projector_failures_total",
    } <= names
    expressions = [e for _, e in dashboard_expressions(DASHBOARDS_DIR / "vk8s-pipeline.json")]
    assert any("histogram_quantile(0.5," in e and "stage" in e for e in expressions)
    assert any("histogram_quantile(0.95," in e and "stage" in e for e in expressions)


def test_gpu_dashboard_shows_capacity_reserved_and_in_use_by_model_node_and_tenant() -> None:
    expressions = " ".join(e for _, e in dashboard_expressions(DASHBOARDS_DIR / "vk8s-gpus.json"))
    for needle in ("by (model", "by (node", "by (namespace)", "in_use|reserved", '"capacity"', "vk8s_scheduler_gpus"):
        assert needle in expressions, needle

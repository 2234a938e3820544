"""deploy/prometheus: the alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`), and the promised alerts exist. promtool comes from scripts/install-system-deps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.referenced_metrics import RULE_FILES, RULES_DIR


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run `bash scripts/install-system-deps` (Debian package prometheus)")
    return found


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=RULES_DIR)


def test_rules_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", *(path.name for path in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests(promtool: str) -> None:
    tests = sorted(path.name for path in RULES_DIR.glob("*_test.yaml"))
    assert tests
    result = run(promtool, "test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def alerts() -> dict[str, dict[str, object]]:
    return {
        rule["alert"]: rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_the_promised_alerts_exist() -> None:
    promised = {
        "Vk8sClusterProvisioningStuck",  # stuck provisioning
        "Vk8sProvisioningFailureRateHigh",  # failure rate
        "Vk8sConsumerLagHigh",  # consumer lag
        "Vk8sGpuPoolNearlyExhausted",  # GPU pool nearly exhausted
        "Vk8sServiceDown",  # a service down
    }
    assert promised <= alerts().keys()


def test_every_alert_is_unit_tested_and_described() -> None:
    tested = {
        case["alertname"]
        for path in RULES_DIR.glob("*_test.yaml")
        for test in yaml.safe_load(Path(path).read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    for name, rule in alerts().items():
        assert name in tested, f"{name} has no promtool test where it fires"
        labels, annotations = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict) and labels["severity"] in {"warning", "critical"}
        assert isinstance(annotations, dict) and {"summary", "description"} <= annotations.keys()

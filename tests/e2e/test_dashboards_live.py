"""The dashboards and alert rules against a real Prometheus (Debian's `prometheus`, installed by
scripts/install-system-deps) scraping a running stack: every panel query and alert expression parses,
every rule evaluates, none fires on a healthy stack, and one given-up message fires Vk8sMessagesGivenUp
and shows on the give-ups panel (its counter existed at 0 before, so increase() sees the first one).

After one cluster reaches Running, every panel about clusters shows its run. Scrape and rule
evaluation run every second, so the whole module takes about a minute and a half. Targets carry the labels the chart's monitors give them (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes.aio import client

from libs.kube import GROUP, PLURAL, VERSION
from tests.support.nats import connect_as_service
from tests.unit.deploy.referenced_metrics import DASHBOARDS_DIR, RULE_FILES, dashboard_expressions, rule_expressions
from vk8s.local import stack
from vk8s.testbed.config import FleetSpec
from vk8s.testbed.fixtures import create_namespace, delete_namespace, new_api_client

NAMESPACE = "vk8s-e2e"  # the namespace label the targets get, as in a release's namespace
# Grafana's variables, as Grafana would fill them for this namespace and a short range.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$__interval": "1s",
    "$namespace": NAMESPACE,
    "$model": ".*",
    "$node": ".*",
}
GIVE_UPS_PANEL = "Retries and give-ups per service"


def fill(expression: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expression = expression.replace(variable, value)
    assert "$" not in expression, f"unfilled variable in {expression}"
    return expression


def panel_queries() -> list[tuple[str, str]]:
    return [
        (f"{path.name}: {title}", fill(expression))
        for path in sorted(DASHBOARDS_DIR.glob("*.json"))
        for title, expression in dashboard_expressions(path)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def api(self, path: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            return json.loads(error.read())

    def query(self, expression: str) -> dict[str, Any]:
        return self.api("query", query=expression)

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["data"]["groups"] for rule in group["rules"]]

    def firing(self) -> list[dict[str, Any]]:
        return [alert for alert in self.api("alerts")["data"]["alerts"] if alert["state"] == "firing"]


def wait_for(check: Any, what: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackInfo]:
    """A stack of its own: the alerts must see only what this module does to it."""
    layout = stack.StackLayout(tmp_path_factory.mktemp("stack"))
    info = stack.up(layout, FleetSpec(nodes=1, gpus_per_node=8))
    try:
        yield info
    finally:
        stack.down(layout)


@pytest.fixture(scope="module")
def prometheus(running_stack: stack.StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: run `bash scripts/install-system-deps` (Debian package prometheus)")
    directory = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [
            {
                "job_name": "vk8s",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{port}"],
                        "labels": {
                            "namespace": NAMESPACE,
                            "app_kubernetes_io_part_of": "vk8s",
                            "app_kubernetes_io_component": service,
                        },
                    }
                    for service, port in running_stack.service_ports.items()
                ],
            }
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        server = Prometheus(url)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{(directory / 'prometheus.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(ready, "prometheus ready", 60)
        expected = len(running_stack.service_ports)

        def all_targets_up() -> bool:
            targets = server.api("targets")["data"]["activeTargets"]
            return len(targets) == expected and all(target["health"] == "up" for target in targets)

        wait_for(all_targets_up, "every service scraped", 60)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_panel_query_and_alert_expression_parses(prometheus: Prometheus) -> None:
    expressions = panel_queries() + [
        (f"{path.name}: {name}", expression) for path in RULE_FILES for name, expression in rule_expressions(path)
    ]
    assert len(expressions) > 40
    refused = {
        where: f"{answer.get('errorType')}: {answer.get('error')}"
        for where, expression in expressions
        if (answer := prometheus.query(expression))["status"] != "success"
    }
    assert not refused, json.dumps(refused, indent=2)


def test_every_rule_is_healthy_and_none_fires_on_a_healthy_stack(prometheus: Prometheus) -> None:
    names = {name for path in RULE_FILES for name, _ in rule_expressions(path)}

    def evaluated() -> list[dict[str, Any]] | None:
        rules = prometheus.rules()
        return rules if all(not rule["lastEvaluation"].startswith("0001") for rule in rules) else None

    rules = wait_for(evaluated, "every rule evaluated once", 30)
    assert {rule["name"] for rule in rules} == names
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy, unhealthy
    time.sleep(5)  # a few more evaluations with the scraped series in place
    assert prometheus.firing() == []


async def test_one_given_up_message_fires_messages_given_up(
    prometheus: Prometheus, running_stack: stack.StackInfo
) -> None:
    """An undecodable cluster.vnodes.ready is terminated as invalid by each stage that reads it."""
    # As the stage that emits cluster.vnodes.ready: no other NATS user may publish it.
    client = await connect_as_service(running_stack, "vnode")
    try:
        await client.jetstream().publish(
            "cluster.vnodes.ready", b"not an event", headers={"Nats-Msg-Id": f"given-up-{uuid.uuid4()}"}
        )
    finally:
        await client.close()

    def given_up() -> list[dict[str, Any]]:
        return [alert for alert in prometheus.firing() if alert["labels"]["alertname"] == "Vk8sMessagesGivenUp"]

    def bootstrap_gave_up() -> list[dict[str, Any]]:
        alerts = given_up()
        return alerts if "bootstrap" in {a["labels"]["app_kubernetes_io_component"] for a in alerts} else []

    # Every stage that consumes the subject gives up on it, each in its own time; bootstrap is one.
    alerts = await asyncio.to_thread(wait_for, bootstrap_gave_up, "Vk8sMessagesGivenUp firing for bootstrap", 60)
    assert {a["labels"]["subject"] for a in alerts} == {"cluster.vnodes.ready"}
    (give_ups,) = [expression for where, expression in panel_queries() if where.endswith(GIVE_UPS_PANEL)]
    shown = {
        (series["metric"].get("app_kubernetes_io_component"), series["metric"].get("outcome")): float(series["value"][1])
        for series in prometheus.query(give_ups)["data"]["result"]
    }
    assert shown.get(("bootstrap", "invalid"), 0) > 0, shown


# Panels one cluster run moves: each must show it (a counter born at its first increment would not).
MOVED_BY_ONE_CLUSTER = (
    "Requests by source and outcome",
    "Time to Running (p50, p95)",
    "Clusters Running in range",
    "vNode pods running after allocation (p95)",
    "Kubernetes bootstrap p95 (bootstrap)",
    "Stage duration p50",
    "Stage duration p95",
    "Messages handled by outcome",
    "Events published (duplicates dropped by the broker)",
    "Handling time p95 per service",
    "gateway: watch and reconcile",
    "projector: status writes",
)


def shows_movement(prometheus: Prometheus, title: str) -> bool:
    """Some series of some query of the panel has a positive, finite value now."""
    for where, expression in panel_queries():
        if where.split(": ", 1)[1] != title:
            continue
        for series in prometheus.query(expression)["data"]["result"]:
            value = float(series["value"][1])
            if math.isfinite(value) and value > 0:
                return True
    return False


async def test_one_cluster_moves_every_panel_about_clusters(
    prometheus: Prometheus, running_stack: stack.StackInfo, tmp_path: Path
) -> None:
    titles = {where.split(": ", 1)[1] for where, _ in panel_queries()}
    assert set(MOVED_BY_ONE_CLUSTER) <= titles
    api = await new_api_client(Path(running_stack.kubeconfig))
    async with api:
        namespace = await create_namespace(api, prefix="dash-")
        try:
            node = {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 1}
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Vk8s",
                "metadata": {"name": "moved", "namespace": namespace},
                "spec": {
                    "kubernetes": {"version": "1.36"},
                    "nodes": [{"name": "moved-master", "role": "master", "resources": {"requests": node, "limits": node}}],
                },
            }
            custom = client.CustomObjectsApi(api)
            await custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

            async def phase() -> str | None:
                obj = cast(dict[str, Any], await custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "moved"))
                return (obj.get("status") or {}).get("phase")

            for _ in range(300):
                if (current := await phase()) in ("Running", "Failed"):
                    break
                await asyncio.sleep(1)
            assert current == "Running", current
            # A few scrapes and evaluations after the last stage event.
            for _ in range(30):
                blank = [title for title in MOVED_BY_ONE_CLUSTER if not shows_movement(prometheus, title)]
                if not blank:
                    break
                await asyncio.sleep(1)
            assert blank == [], f"panels that do not show the cluster's run: {blank}"
        finally:
            await delete_namespace(api, namespace)

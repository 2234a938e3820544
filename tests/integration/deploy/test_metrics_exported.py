"""A dashboard must not chart, and an alert must not watch, a metric nobody exports.

Each service runs as its container would (`python -m services.<name>`, the environment of the installed
release's Deployment, its NATS credentials from the Secret), against a NATS server running the release's
per-service NATS users, and the test cluster as the service's own account (a TokenRequest token, so the
chart's RBAC is what it gets). Once /readyz answers 200 its /metrics is scraped. Metrics of other exporters are allowed
only through referenced_metrics.EXTERNAL_METRICS, each entry saying where it comes from.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio import client

from services.topology import NAMES as SERVICES
from tests.integration.deploy.conftest import NATS_SECRET, NATS_SECRET_DATA, Release, run_helm, service_account_kubeconfig
from tests.unit.deploy.referenced_metrics import EXTERNAL_METRICS, exposition_names, our_metrics
from vk8s.local.nats_server import LocalNatsServer
from vk8s.testbed.config import REPO_ROOT

# Seven interpreters importing the Kubernetes client at once are slow on a busy CI machine.
READY_TIMEOUT_S = 180.0


@dataclass
class Started:
    service: str
    process: subprocess.Popen[bytes] | None
    log: Path
    port: int
    metrics: str = ""
    problem: str = ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def nats_with_the_charts_users(directory: Path, users: dict[str, Any]) -> Iterator[str]:
    """nats-server with JetStream running the release's NATS users (its nats-users ConfigMap, included as
    an operator's NATS servers would), their passwords the variables it reads from the Secret."""
    store = directory / "nats"
    store.mkdir()
    (store / "users.conf").write_text(users["data"]["users.conf"])
    environment = {f"VK8S_NATS_{service.upper()}_PASSWORD": NATS_SECRET_DATA[f"{service}-password"] for service in SERVICES}
    config = 'authorization {\n  include "users.conf"\n}\n'
    with LocalNatsServer(store, authorization=config, environment=environment) as server:
        yield server.url


def container_env(deployment: dict[str, Any], secrets: dict[str, dict[str, str]], files: Path) -> dict[str, str]:
    """The container's environment, its Secret references resolved from `secrets` (name -> data),
    and paths into its mounted Secrets pointing at those files, written under `files` as the
    kubelet would mount them."""
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            reference = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[reference["name"]][reference["key"]]
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        data = secrets[secret["secretName"]]
        local = files / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        for item in secret.get("items") or [{"key": key, "path": key} for key in data]:
            (local / item["path"]).write_text(data[item["key"]])
        inside = f"{mount['mountPath'].rstrip('/')}/"
        env = {name: f"{local}/{value.removeprefix(inside)}" if value.startswith(inside) else value for name, value in env.items()}
    return env


def start(
    service: str, deployment: dict[str, Any] | None, env: dict[str, str], kubeconfig: Path, logs: Path
) -> Started:
    port = free_port()
    log = logs / f"{service}.log"
    if not (REPO_ROOT / "services" / service / "__main__.py").exists():
        return Started(service, None, log, port, problem=f"services/{service}/__main__.py does not exist (yet)")
    assert deployment is not None
    prefix = f"VK8S_{service.upper()}_"
    env = {
        **env,
        f"{prefix}HTTP_HOST": "127.0.0.1",
        f"{prefix}HTTP_PORT": str(port),
        # One test server: every stream and bucket gets one replica, whatever the release asks.
        **{key: "1" for key in env if key.startswith(prefix) and key.endswith("_REPLICAS")},
    }
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = [sys.executable if part == "python" else part for part in container["command"]]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(logs), "KUBECONFIG": str(kubeconfig), **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Started(service, process, log, port)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError as error:
        return 0, str(error)


def wait_ready_and_scrape(started: list[Started]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = [s for s in started if s.process is not None]
    while waiting and time.monotonic() < deadline:
        for entry in list(waiting):
            assert entry.process is not None
            if entry.process.poll() is not None:
                entry.problem = f"exited with {entry.process.returncode} before it was ready:\n{entry.log_tail()}"
                waiting.remove(entry)
            elif get(f"http://127.0.0.1:{entry.port}/readyz")[0] == 200:
                status, body = get(f"http://127.0.0.1:{entry.port}/metrics")
                if status == 200:
                    entry.metrics = body
                else:
                    entry.problem = f"/metrics answered {status}: {body[:500]}"
                waiting.remove(entry)
        time.sleep(0.2)
    for entry in waiting:
        status, body = get(f"http://127.0.0.1:{entry.port}/readyz")
        entry.problem = f"not ready after {READY_TIMEOUT_S:.0f}s (/readyz {status}: {body[:300]}):\n{entry.log_tail()}"
        # Not ready is its own failure; what it exports still counts for the dashboards' check.
        status, body = get(f"http://127.0.0.1:{entry.port}/metrics")
        if status == 200:
            entry.metrics = body


@pytest.fixture(scope="module")
async def scraped(
    release: Release, kube_api: client.ApiClient, kube_config_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Started]]:
    scratch = tmp_path_factory.mktemp("services")
    manifest = run_helm(kube_config_path, "get", "manifest", release.name, "--namespace", release.namespace).stdout
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in yaml.safe_load_all(manifest)
        if d and d["kind"] == "Deployment"
    }
    # The NATS Secret as conftest made it; the read APIs' token Secret and the NATS users the chart made.
    (read_api,) = [
        d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "Secret" and d["metadata"]["name"].endswith("-read-api")
    ]
    (users,) = [
        d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-nats-users")
    ]
    secrets = {
        NATS_SECRET: NATS_SECRET_DATA,
        read_api["metadata"]["name"]: {"token": base64.b64decode(read_api["data"]["token"]).decode()},
    }
    with nats_with_the_charts_users(scratch, users) as nats_url:
        started = []
        for service in SERVICES:
            deployment = deployments.get(service)
            env = container_env(deployment, secrets, scratch / f"{service}-files") if deployment else {}
            env[f"VK8S_{service.upper()}_NATS_URL"] = nats_url
            if service == "gateway":
                # On a shared cluster ($KUBECONFIG) the gateway must not take over other Vk8s objects
                # (finalizers, events): it watches only the release's empty tenant namespace.
                env["VK8S_GATEWAY_NAMESPACE"] = release.tenants[0]
            kubeconfig = await service_account_kubeconfig(
                kube_api,
                kube_config_path,
                release.namespace,
                release.service_account(service),
                scratch / f"{service}.kubeconfig",
            )
            started.append(start(service, deployment, env, kubeconfig, scratch))
        try:
            wait_ready_and_scrape(started)
            yield {entry.service: entry for entry in started}
        finally:
            for entry in started:
                if entry.process is not None and entry.process.poll() is None:
                    entry.process.terminate()
            for entry in started:
                if entry.process is not None:
                    try:
                        entry.process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        entry.process.kill()
                        entry.process.wait()


@pytest.mark.parametrize("service", SERVICES)
def test_service_becomes_ready_with_the_charts_settings_and_rbac(scraped: dict[str, Started], service: str) -> None:
    entry = scraped[service]
    assert not entry.problem, f"{service}: {entry.problem}"
    assert entry.process is not None and entry.process.poll() is None, (
        f"{service} stopped after it was ready:\n{entry.log_tail()}"
    )


def test_every_metric_read_by_a_dashboard_or_alert_is_exported(scraped: dict[str, Started]) -> None:
    exported: dict[str, set[str]] = {name: exposition_names(entry.metrics) for name, entry in scraped.items()}
    everything = set().union(*exported.values())
    missing = {name: where for name, where in our_metrics().items() if name not in everything}
    not_running = sorted(name for name, entry in scraped.items() if not entry.metrics)
    lines = [f"  {name}  (read by {'; '.join(sorted(where))})" for name, where in sorted(missing.items())]
    assert not missing, (
        "metrics read by dashboards or alert rules that no service exports"
        + (f" (services that did not run: {', '.join(not_running)})" if not_running else "")
        + ":\n"
        + "\n".join(lines)
    )


def test_external_metrics_are_not_ours() -> None:
    """The allow-list holds only other exporters' names: none may shadow a vk8s_ metric."""
    assert not [name for name in EXTERNAL_METRICS if name.startswith("vk8s_")]

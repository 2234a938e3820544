"""The whole product on one machine: a local NATS, the testbed control plane and every service as
a subprocess. `vk8s up` starts it; `vk8s down` stops it; the CLI finds it through stack.json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vk8s.local.keeper import RESTART_EVENT
from vk8s.local.nats_server import LocalNatsServer
from vk8s.testbed import lifecycle
from vk8s.testbed.config import NODE_NETWORK, FleetSpec, ReadyInfo, StateLayout

# Pipeline order; each runs as `python -m services.<name>`.
REPO = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "scheduler", "ipmanager", "vnode", "bootstrap", "kubeflow", "projector")


def default_root() -> Path:
    return Path(os.environ.get("VK8S_STATE_DIR", Path.home() / ".local/state/vk8s")).expanduser()


@dataclass(frozen=True)
class StackInfo:
    nats_url: str
    kubeconfig: str
    nats_pid: int
    service_pids: dict[str, int] = field(default_factory=dict)
    service_ports: dict[str, int] = field(default_factory=dict)


class StackLayout:
    def __init__(self, root: Path | None = None):
        self.root = (root or default_root()).absolute()
        self.testbed = StateLayout(self.root / "testbed")
        self.nats = self.root / "nats"
        self.logs = self.root / "logs"
        self.info_file = self.root / "stack.json"


def read_info(layout: StackLayout) -> StackInfo | None:
    try:
        return StackInfo(**json.loads(layout.info_file.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ServiceEnvironment:
    """The env each service gets in the local stack: NATS, the testbed kubeconfig, its own port."""

    def __init__(self, nats_url: str, kubeconfig: str, extra: dict[str, str] | None = None):
        self.nats_url = nats_url
        self.kubeconfig = kubeconfig
        self.extra = extra or {}

    def for_service(self, name: str, port: int) -> dict[str, str]:
        prefix = f"VK8S_{name.upper()}_"
        env = dict(os.environ)
        env.update(
            {
                "KUBECONFIG": self.kubeconfig,
                f"{prefix}NATS_URL": self.nats_url,
                f"{prefix}KUBECONFIG": self.kubeconfig,
                f"{prefix}HTTP_HOST": "127.0.0.1",
                f"{prefix}HTTP_PORT": str(port),
                f"{prefix}LOG_FORMAT": "json",
            }
        )
        env.update(self.extra)
        return env


# The processes this process started, so they are reaped here (not left as zombies or warned
# about) when it is the one that stops them; `vk8s down` from another process signals by pid.
_children: dict[int, subprocess.Popen[bytes]] = {}


def start_services(
    environment: ServiceEnvironment, logs: Path, names: tuple[str, ...] = SERVICES
) -> tuple[dict[str, int], dict[str, int]]:
    logs.mkdir(parents=True, exist_ok=True)
    pids: dict[str, int] = {}
    ports: dict[str, int] = {}
    for name in names:
        port = _free_port()
        with (logs / f"{name}.log").open("ab") as log:
            # Under a keeper, as under a Deployment: a service process that dies is started again.
            process = subprocess.Popen(
                [sys.executable, "-m", "vk8s.local.keeper", name, "--", sys.executable, "-m", f"services.{name}"],
                env=environment.for_service(name, port),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _children[process.pid] = process
        pids[name], ports[name] = process.pid, port
    return pids, ports


def wait_ready(ports: dict[str, int], pids: dict[str, int], logs: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = dict(ports)
    while waiting:
        for name, port in list(waiting.items()):
            log = logs / f"{name}.log"
            # Its keeper would start it again and again: a start-up failure is reported at once.
            if not _alive(pids[name]) or _reaped(pids[name]) or _restarted(log):
                tail = log.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"service {name} exited during start-up:\n" + "\n".join(tail))
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        del waiting[name]
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"services not ready after {timeout_s:.0f}s: {', '.join(waiting)} (logs in {logs})")
        time.sleep(0.2)


def _restarted(log: Path) -> bool:
    """Whether the service's keeper has logged an exit of the service process."""
    try:
        return RESTART_EVENT in log.read_text(errors="replace")
    except FileNotFoundError:
        return False


def _reaped(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return False
        del _children[pid]
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def stop_pids(pids: dict[str, int] | list[int], timeout_s: float = 20.0) -> None:
    targets = list(pids.values()) if isinstance(pids, dict) else list(pids)
    for pid in targets:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout_s
    for pid in targets:
        while _alive(pid) and not _reaped(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid) and not _reaped(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _demo_settings(layout: StackLayout) -> dict[str, str]:
    """This machine cannot reach the Kubeflow manifests repository: every release installs from
    the minimal local mirror shipped in deploy/kubeflow/ (see its README)."""
    sources = layout.root / "kubeflow-sources.yaml"
    sources.write_text(json.dumps({"default": {"directory": str(REPO / "deploy/kubeflow/minimal")}}))
    return {"VK8S_KUBEFLOW_SOURCES_FILE": str(sources)}


def _real_tier_settings(ready: ReadyInfo) -> dict[str, str]:
    """On real host nodes: no /lib/modules on this machine to mount (its kernel has everything
    built in); vNode API servers reached through the testbed's proxy; Kubeflow's images cannot be
    pulled here, so its stage reports what is applied and what is not available instead of waiting."""
    assert ready.proxy_url is not None
    return {
        "VK8S_VNODE_HOST_DIRS": "{}",
        "VK8S_IPMANAGER_HOST_NODE_CIDRS": json.dumps([str(NODE_NETWORK)]),
        "VK8S_KUBEFLOW_INNER_PROXY_URL": ready.proxy_url,
        "VK8S_KUBEFLOW_WAIT_FOR_AVAILABLE": "false",
    }


def up(layout: StackLayout, fleet: FleetSpec, extra_env: dict[str, str] | None = None) -> StackInfo:
    """Starts NATS, the testbed and the services (each detached) and records them in stack.json."""
    existing = read_info(layout)
    if existing and _alive(existing.nats_pid):
        raise RuntimeError(f"a stack already runs from {layout.root}; `vk8s down` stops it")
    layout.root.mkdir(parents=True, exist_ok=True)
    bin_dir = lifecycle.ensure_binaries()
    ready = lifecycle.read_ready(layout.testbed)
    if ready is None or lifecycle.supervisor_pid(layout.testbed) is None:
        ready = lifecycle.start_detached(layout.testbed, fleet, bin_dir)
    extra = {**_demo_settings(layout), **(_real_tier_settings(ready) if fleet.runtime == "real" else {})}
    extra |= extra_env or {}
    nats = LocalNatsServer(layout.nats, log_file=layout.root / "nats-server.log")
    nats.start()
    if nats.process is not None:
        _children[nats.pid] = nats.process
    environment = ServiceEnvironment(nats.url, ready.kubeconfig, extra)
    pids, ports = start_services(environment, layout.logs)
    info = StackInfo(nats.url, ready.kubeconfig, nats.pid, pids, ports)
    layout.info_file.write_text(json.dumps(asdict(info), indent=2))
    try:
        wait_ready(ports, pids, layout.logs)
    except Exception:
        down(layout)
        raise
    return info


def down(layout: StackLayout) -> bool:
    """Stops the services, NATS and the testbed, and removes their state."""
    info = read_info(layout)
    stopped = False
    if info:
        stop_pids(info.service_pids)
        stop_pids([info.nats_pid])
        stopped = True
    stopped = lifecycle.stop(layout.testbed) or stopped
    # The testbed's etcd went with it: events about its objects must go too.
    shutil.rmtree(layout.nats, ignore_errors=True)
    layout.info_file.unlink(missing_ok=True)
    return stopped

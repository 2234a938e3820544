"""The inner control plane of a simulated master vNode: real processes, wired as the testbed's own.

kube-apiserver (on the testbed's etcd, under a key prefix of its own), kube-controller-manager,
kube-scheduler and a kwok that plays every inner node. Command lines come from the testbed's
component specs with a few flags appended (the last of a repeated flag wins), and are saved at
`kubeadm init`, so `systemctl start kubelet` after a pause brings back the very same processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import yaml

from vk8s.testbed import components, kwok
from vk8s.testbed.certs import write_pki
from vk8s.testbed.config import LOOPBACK, Ports, StateLayout
from vk8s.testbed.node_sim import processes
from vk8s.testbed.node_sim.api import Api, ApiError, poll
from vk8s.testbed.node_sim.env import NodeEnv, SimError
from vk8s.testbed.node_sim.state import ClusterState, Networking

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
# Go's heap target: the inner clusters are small, and several share one machine.
_GO_ENV = {"GOGC": "50"}


def _rename_cluster(kubeconfig: Path, cluster_name: str) -> None:
    document = yaml.safe_load(kubeconfig.read_text())
    user = document["users"][0]["name"]
    document["clusters"][0]["name"] = cluster_name
    context = {"name": f"{user}@{cluster_name}", "context": {"cluster": cluster_name, "user": user}}
    document["contexts"] = [context]
    document["current-context"] = context["name"]
    kubeconfig.write_text(yaml.safe_dump(document, sort_keys=False))


def create(env: NodeEnv, node_name: str, kubernetes_version: str, networking: Networking) -> ClusterState:
    """Certificates, kubeconfigs and command lines of a new inner control plane (nothing runs yet)."""
    layout = StateLayout(env.sim_dir)
    for directory in (layout.logs, layout.kwok_home):
        directory.mkdir(parents=True, exist_ok=True)
    pki = write_pki(env.kubernetes_dir / "pki")
    etcd = urlparse(env.etcd_url)
    if etcd.port is None:
        raise SimError(f"VK8S_TESTBED_ETCD={env.etcd_url} names no port")
    # The testbed's etcd; fresh loopback ports for the rest (the etcd peer port goes unused).
    ports = Ports.pick_free().model_copy(update={"etcd_client": etcd.port})
    server = components.apiserver_url(ports)
    identities = {
        "admin": ("kubernetes-admin", pki.admin),
        "controller-manager": ("system:kube-controller-manager", pki.controller_manager),
        "scheduler": ("system:kube-scheduler", pki.scheduler),
        "kwok": ("vk8s-kwok", pki.kwok),
    }
    kubeconfigs = {}
    for name, (user, pair) in identities.items():
        path = components.write_kubeconfig(
            env.kubernetes_dir / f"{name}.conf", server=server, ca=pki.ca.cert, user=user, credentials=pair
        )
        _rename_cluster(path, networking.cluster_name)
        kubeconfigs[name] = path
    kwok.write_config(layout.kwok_config, gate_on_sandbox=False)

    bin_dir = env.testbed_bin
    apiserver_spec = components.kube_apiserver(bin_dir, pki, ports)
    apiserver_spec.argv.extend(
        [
            f"--etcd-prefix={env.etcd_prefix}",
            f"--service-cluster-ip-range={networking.service_subnet}",
            f"--advertise-address={LOOPBACK}",
            # kubeadm join authenticates with a bootstrap token.
            "--enable-bootstrap-token-auth=true",
        ]
    )
    kcm_spec = components.kube_controller_manager(bin_dir, pki, ports, kubeconfigs["controller-manager"])
    kcm_spec.argv.extend(
        [f"--cluster-name={networking.cluster_name}", f"--service-cluster-ip-range={networking.service_subnet}"]
    )
    if networking.pod_subnet:
        kcm_spec.argv.extend(["--allocate-node-cidrs=true", f"--cluster-cidr={networking.pod_subnet}"])
    scheduler_spec = components.kube_scheduler(bin_dir, ports, kubeconfigs["scheduler"])
    kwok_spec = components.kwok(bin_dir, layout, pki, ports, kubeconfigs["kwok"])
    state = ClusterState(
        node_name=node_name,
        kubernetes_version=kubernetes_version,
        etcd_prefix=env.etcd_prefix,
        networking=networking,
        ports={
            "apiserver": ports.apiserver,
            "controller-manager": ports.controller_manager,
            "scheduler": ports.scheduler,
            "kwok": ports.kwok,
        },
        processes=[
            {"name": spec.name, "argv": spec.argv, "env": {**_GO_ENV, **spec.env}}
            for spec in (apiserver_spec, kcm_spec, scheduler_spec, kwok_spec)
        ],
    )
    state.save(env)
    return state


def admin_api(env: NodeEnv) -> Api:
    return Api.from_kubeconfig(env.admin_conf)


def _apiserver_ready(api: Api) -> bool | None:
    try:
        api.request("GET", "/readyz")
    except ApiError as error:
        # /readyz answers text; a JSON decode error still means 200.
        if error.status in (0, 500, 503):
            return None
        raise
    except json.JSONDecodeError:
        pass
    return True


def _exec_crd_established(api: Api) -> bool | None:
    (crd,) = kwok.crd_documents(("Exec",))
    current = api.create_or_get(CRD_PATH, crd)
    conditions = (current.get("status") or {}).get("conditions") or []
    return True if any(c["type"] == "Established" and c["status"] == "True" for c in conditions) else None


def start(env: NodeEnv, state: ClusterState, timeout: float = 90.0) -> list[str]:
    """Starts whichever inner control-plane process is not running, in order; returns those started."""
    run_dir, logs = env.run_dir, StateLayout(env.sim_dir).logs
    started = []
    api = admin_api(env)
    for spec in state.processes:
        name = spec["name"]
        if processes.running(run_dir, name) is not None:
            continue
        if name == "kwok":
            # kwok watches Exec objects from its start, so their CRD must be served first.
            poll(lambda: _exec_crd_established(api), "the inner Exec CRD", timeout)
        processes.start(run_dir, name, spec["argv"], log=logs / f"{name}.log", env=spec["env"])
        started.append(name)
        if name == "kube-apiserver":
            try:
                poll(lambda: _apiserver_ready(api), "the inner kube-apiserver to be ready", timeout)
            except SimError:
                if processes.running(run_dir, name) is None:
                    raise SimError(f"the inner kube-apiserver exited; log {logs / (name + '.log')}") from None
                raise
    return started


def stop(env: NodeEnv) -> list[str]:
    return processes.stop_all(env.run_dir)

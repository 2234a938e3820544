"""Command lines of the control-plane components, wired the way kubeadm wires a real cluster."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from vk8s.testbed.certs import SERVICE_CIDR, KeyPair, Pki
from vk8s.testbed.config import FAKE_NODE_ANNOTATION, LOOPBACK, Ports, StateLayout
from vk8s.testbed.processes import ProcessSpec

CLUSTER_NAME = "vk8s-testbed"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Kinds whose objects kwok reads from the API rather than from its config file.
KWOK_CRDS = ("Exec",)


def apiserver_url(ports: Ports) -> str:
    return f"https://{LOOPBACK}:{ports.apiserver}"


def write_kubeconfig(path: Path, *, server: str, ca: Path, user: str, credentials: KeyPair) -> Path:
    """A self-contained kubeconfig (certificates inline) that authenticates by client certificate."""

    def inline(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CLUSTER_NAME, "cluster": {"server": server, "certificate-authority-data": inline(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": inline(credentials.cert),
                    "client-key-data": inline(credentials.key),
                },
            }
        ],
        "contexts": [{"name": f"{user}@{CLUSTER_NAME}", "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": f"{user}@{CLUSTER_NAME}",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path


def etcd(bin_dir: Path, layout: StateLayout, ports: Ports) -> ProcessSpec:
    client = f"http://{LOOPBACK}:{ports.etcd_client}"
    peer = f"http://{LOOPBACK}:{ports.etcd_peer}"
    return ProcessSpec(
        name="etcd",
        argv=[
            str(bin_dir / "etcd"),
            "--name=testbed",
            f"--data-dir={layout.etcd_data}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=testbed={peer}",
            "--initial-cluster-state=new",
            "--listen-metrics-urls=",
            # A throwaway single-member store: durability across power loss buys nothing here.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )


def kube_apiserver(bin_dir: Path, pki: Pki, ports: Ports, advertise_address: str | None = None) -> ProcessSpec:
    """`advertise_address`: the real tier's namespace has no default route to derive one from."""
    advertise = [f"--advertise-address={advertise_address}"] if advertise_address else []
    return ProcessSpec(
        name="kube-apiserver",
        argv=[
            str(bin_dir / "kube-apiserver"),
            *advertise,
            f"--etcd-servers=http://{LOOPBACK}:{ports.etcd_client}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Exec and logs go to kwok's kubelet server, which presents a certificate from our CA.
            f"--kubelet-certificate-authority={pki.ca.cert}",
            f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            # It listens on loopback only, which Endpoints cannot hold: the `kubernetes` Service stays empty.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ],
    )


def kube_controller_manager(bin_dir: Path, pki: Pki, ports: Ports, kubeconfig: Path) -> ProcessSpec:
    return ProcessSpec(
        name="kube-controller-manager",
        argv=[
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={ports.controller_manager}",
            f"--client-ca-file={pki.ca.cert}",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--cluster-name={CLUSTER_NAME}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=true",
            # Each controller fetches its own token at start; the default 20 QPS makes that take seconds.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            # As kubeadm: the bootstrap-token controllers are what a kubeadm join relies on.
            "--controllers=*,bootstrapsigner,tokencleaner",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ],
    )


def kube_scheduler(bin_dir: Path, ports: Ports, kubeconfig: Path) -> ProcessSpec:
    return ProcessSpec(
        name="kube-scheduler",
        argv=[
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={ports.scheduler}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ],
    )


def kwok(bin_dir: Path, layout: StateLayout, pki: Pki, ports: Ports, kubeconfig: Path) -> ProcessSpec:
    key, value = FAKE_NODE_ANNOTATION
    return ProcessSpec(
        name="kwok",
        argv=[
            str(bin_dir / "kwok"),
            f"--kubeconfig={kubeconfig}",
            f"--config={layout.kwok_config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            f"--node-ip={LOOPBACK}",
            f"--node-port={ports.kwok}",
            f"--server-address={LOOPBACK}:{ports.kwok}",
            f"--tls-cert-file={pki.kwok_serving.cert}",
            f"--tls-private-key-file={pki.kwok_serving.key}",
            "--node-lease-duration-seconds=40",
            f"--enable-crds={','.join(KWOK_CRDS)}",
        ],
        env={"HOME": str(layout.kwok_home)},
    )

"""`kubeadm` of a simulated vNode.

- `init --config F`: reads the kubeadm config (v1beta2, v1beta3 or v1beta4), starts the inner
  control plane (see cluster.py), then lets the testbed's real kubeadm binary do the API-side
  phases (bootstrap-token RBAC and cluster-info, upload-config, CoreDNS and kube-proxy addons),
  and registers this vNode as the first inner Node, tainted as a control plane.
- `join ENDPOINT --token T --discovery-token-ca-cert-hash sha256:H`: token discovery as kubeadm
  does it (cluster-info fetched untrusted, its JWS signature checked with the token, the CA
  pinned by hash), then TLS bootstrap (a CSR the inner controller-manager approves and signs),
  kubelet.conf, and the Node registered with the kubelet's own credentials.
- `token ...` and `version`: the real kubeadm binary (v1.36.3, the testbed's).
- `reset --force`: stops this sandbox's inner processes and removes what init/join wrote.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from libs.api.quantity import parse_quantity
from vk8s.testbed.config import FAKE_NODE_ANNOTATION, GPU_RESOURCE, LOOPBACK
from vk8s.testbed.node_sim import cluster, tools
from vk8s.testbed.node_sim.api import MERGE_PATCH, Api, ApiError, poll
from vk8s.testbed.node_sim.env import NodeEnv, SimError
from vk8s.testbed.node_sim.etcd import delete_etcd_prefix
from vk8s.testbed.node_sim.state import ClusterState, Networking, state_path

CRI_SOCKET = "unix:///run/containerd/containerd.sock"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
DEFAULT_EVICTION_MEMORY = "100Mi"
MAX_PODS = "110"
# TEST-NET-1: a syntactically fine address that is nobody's.
DOCUMENTATION_ADDRESS = "192.0.2.10"


def _real_kubeadm(env: NodeEnv, *args: str, check: bool = True) -> str:
    result = subprocess.run([str(env.kubeadm), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        lines = [
            line for line in (result.stderr + result.stdout).splitlines() if line.strip() and "stack trace" not in line
        ]
        raise SimError(f"kubeadm {' '.join(args[:3])} failed: {lines[-1] if lines else result.returncode}")
    return result.stdout


def _testbed_version(env: NodeEnv) -> str:
    return _real_kubeadm(env, "version", "-o", "short").strip()


# --- kubeadm configuration ---------------------------------------------------------------------


def read_config(path: Path) -> dict[str, dict[str, Any]]:
    """The documents of a kubeadm config file by kind (any kubeadm.k8s.io version)."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as error:
        raise SimError(f"cannot read kubeadm config {path}: {error}") from None
    by_kind: dict[str, dict[str, Any]] = {}
    for document in documents:
        if not isinstance(document, dict) or "kind" not in document:
            raise SimError(f"{path}: every document needs apiVersion and kind")
        group = str(document.get("apiVersion", "")).split("/")[0]
        if document["kind"] in ("InitConfiguration", "ClusterConfiguration", "JoinConfiguration"):
            if group != "kubeadm.k8s.io":
                raise SimError(f"{path}: {document['kind']} must be kubeadm.k8s.io, not {document.get('apiVersion')}")
        by_kind[document["kind"]] = document
    return by_kind


def _networking(cluster_config: dict[str, Any]) -> Networking:
    networking = cluster_config.get("networking") or {}
    defaults = Networking()
    return Networking(
        cluster_name=cluster_config.get("clusterName") or defaults.cluster_name,
        pod_subnet=networking.get("podSubnet") or None,
        service_subnet=networking.get("serviceSubnet") or defaults.service_subnet,
        dns_domain=networking.get("dnsDomain") or defaults.dns_domain,
    )


def _advertise_address(init_config: dict[str, Any]) -> str:
    address = (init_config.get("localAPIEndpoint") or {}).get("advertiseAddress")
    try:
        if address and not ipaddress.ip_address(address).is_loopback:
            return str(address)
    except ValueError:
        pass
    return DOCUMENTATION_ADDRESS


def _phase_config(env: NodeEnv, state: ClusterState, init_config: dict[str, Any]) -> Path:
    """The config in the form the real kubeadm (v1.36) reads, pointing at the inner control plane."""
    endpoint = f"{LOOPBACK}:{state.ports['apiserver']}"
    networking = {"serviceSubnet": state.networking.service_subnet, "dnsDomain": state.networking.dns_domain}
    if state.networking.pod_subnet:
        networking["podSubnet"] = state.networking.pod_subnet
    init = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "InitConfiguration",
        # kubeadm refuses a loopback advertise address; clients use controlPlaneEndpoint anyway.
        "localAPIEndpoint": {"advertiseAddress": _advertise_address(init_config), "bindPort": state.ports["apiserver"]},
        "nodeRegistration": {"name": state.node_name, "criSocket": CRI_SOCKET},
    }
    if init_config.get("bootstrapTokens"):
        init["bootstrapTokens"] = init_config["bootstrapTokens"]
    cluster_config = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": state.networking.cluster_name,
        # What runs, whatever was asked: the testbed has one Kubernetes version.
        "kubernetesVersion": _testbed_version(env),
        "controlPlaneEndpoint": endpoint,
        "certificatesDir": str(env.kubernetes_dir / "pki"),
        "networking": networking,
        "etcd": {"external": {"endpoints": [env.etcd_url]}},
    }
    path = env.sim_dir / "kubeadm-v1beta4.yaml"
    path.write_text(yaml.safe_dump_all([init, cluster_config], sort_keys=False))
    return path


# --- nodes ---------------------------------------------------------------------------------------


def _quantity(value: Any) -> Decimal:
    return parse_quantity(value if isinstance(value, int) else str(value))


def _cpu(millicores: Decimal) -> str:
    millicores = max(millicores, Decimal(0))
    return str(int(millicores / 1000)) if millicores % 1000 == 0 else f"{int(millicores)}m"


def _host_memory() -> Decimal:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return Decimal(int(line.split()[1]) * 1024)
    raise SimError("no MemTotal in /proc/meminfo")


def node_resources(env: NodeEnv) -> tuple[dict[str, str], dict[str, str]]:
    """Capacity (the host's) and allocatable (capacity - systemReserved - evictionHard), as a
    kubelet with the drop-in `vk8s-node prepare` wrote would report them."""
    host_cpu = _quantity(os.environ.get("VK8S_HOST_CPU") or os.cpu_count() or 1)
    host_memory = _quantity(os.environ["VK8S_HOST_MEMORY"]) if os.environ.get("VK8S_HOST_MEMORY") else _host_memory()
    kubelet: dict[str, Any] = {}
    if env.kubelet_dropin.exists():
        kubelet = yaml.safe_load(env.kubelet_dropin.read_text()) or {}
    reserved = kubelet.get("systemReserved") or {}
    eviction = (kubelet.get("evictionHard") or {}).get("memory.available", DEFAULT_EVICTION_MEMORY)
    allocatable_cpu = host_cpu * 1000 - _quantity(reserved.get("cpu", 0)) * 1000
    allocatable_memory = host_memory - _quantity(reserved.get("memory", 0)) - _quantity(eviction)
    capacity = {"cpu": _cpu(host_cpu * 1000), "memory": str(int(host_memory)), "pods": MAX_PODS}
    allocatable = {"cpu": _cpu(allocatable_cpu), "memory": str(max(int(allocatable_memory), 0)), "pods": MAX_PODS}
    gpus = 0
    if env.gpu_config.exists():
        gpus = len(json.loads(env.gpu_config.read_text()).get("ids") or [])
    if gpus:
        # What the vNode's device plugin advertises: exactly the GPUs in gpus.json.
        capacity[GPU_RESOURCE] = allocatable[GPU_RESOURCE] = str(gpus)
    return capacity, allocatable


def node_manifest(env: NodeEnv, name: str, version: str) -> dict[str, Any]:
    capacity, allocatable = node_resources(env)
    key, value = FAKE_NODE_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
            },
            # The inner kwok manages nodes with this annotation, as the testbed's kwok does.
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            # The inner apiserver reaches this "kubelet" (the inner kwok's server) at this address.
            "addresses": [{"type": "InternalIP", "address": LOOPBACK}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "vk8s simulated vNode",
                "kernelVersion": "kwok",
                "containerRuntimeVersion": f"containerd://{tools.CONTAINERD_VERSION}",
                "kubeletVersion": version,
                "kubeProxyVersion": version,
                "machineID": hashlib.md5(env.key.encode()).hexdigest(),
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def _tls_bootstrap(env: NodeEnv, server: str, ca_pem: bytes, token: str, node_name: str) -> None:
    """What a kubelet does with a bootstrap token: a CSR for system:node:<name>, approved and signed
    by the inner controller-manager, becomes the client certificate in kubelet.conf."""
    api = Api(server, ca_pem=ca_pem, token=token)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}"),
        ]
    )
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    csr_name = f"node-csr-{hashlib.sha256(f'{node_name}{time.time_ns()}'.encode()).hexdigest()[:20]}"
    csr = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": csr_name},
        "spec": {
            "request": base64.b64encode(request.public_bytes(serialization.Encoding.PEM)).decode(),
            "signerName": KUBELET_SIGNER,
            "usages": ["digital signature", "client auth"],
        },
    }

    def submitted() -> bool | None:
        # A token made a moment ago is unknown until the API server's token cache has seen its
        # Secret (401 meanwhile); a real kubelet retries its bootstrap the same way.
        try:
            api.request("POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", csr)
        except ApiError as error:
            if error.status == 401:
                raise
            if error.status != 409:  # 409: an earlier try got through
                raise SimError(str(error)) from error
        return True

    poll(submitted, "the bootstrap token to be accepted", timeout=30)

    def issued() -> bytes | None:
        csr = api.request("GET", f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{csr_name}")
        conditions = {c["type"]: c for c in (csr.get("status") or {}).get("conditions") or []}
        if "Denied" in conditions or "Failed" in conditions:
            reason = (conditions.get("Denied") or conditions["Failed"]).get("message", "")
            raise SimError(f"the kubelet client certificate request was refused: {reason}")
        certificate = (csr.get("status") or {}).get("certificate")
        return base64.b64decode(certificate) if certificate else None

    certificate = poll(issued, "the kubelet client certificate (CSR approval and signing)", timeout=60)
    env.kubelet_pki.mkdir(parents=True, exist_ok=True)
    pem = env.kubelet_pki / "kubelet-client-current.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem.write_bytes(certificate + key_pem)
    pem.chmod(0o600)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "default-cluster",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()},
            }
        ],
        "users": [{"name": "default-auth", "user": {"client-certificate": str(pem), "client-key": str(pem)}}],
        "contexts": [
            {
                "name": "default-context",
                "context": {"cluster": "default-cluster", "namespace": "default", "user": "default-auth"},
            }
        ],
        "current-context": "default-context",
    }
    env.kubelet_conf.parent.mkdir(parents=True, exist_ok=True)
    env.kubelet_conf.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
    env.kubelet_conf.chmod(0o600)


def _register_node(env: NodeEnv, node_name: str, version: str) -> None:
    """The kubelet registers its Node with its own credentials (the NodeRestriction path)."""
    kubelet = Api.from_kubeconfig(env.kubelet_conf)
    manifest = node_manifest(env, node_name, version)
    try:
        kubelet.request("POST", "/api/v1/nodes", manifest)
    except ApiError as error:
        if error.status != 409:
            raise
        # Re-registration (a reset node joining again): refresh what this node reports.
        kubelet.request(
            "PATCH", f"/api/v1/nodes/{node_name}/status", {"status": manifest["status"]}, content_type=MERGE_PATCH
        )
    tools.set_unit_active(env, "kubelet", True)


def refresh_node_status(env: NodeEnv) -> None:
    """What a starting kubelet reports of its registered Node: the resources it has now (a vNode
    grown in place comes back with more GPUs). Nothing before the node joined."""
    pem = env.kubelet_pki / "kubelet-client-current.pem"
    if not (env.kubelet_conf.exists() and pem.exists()):
        return
    subject = x509.load_pem_x509_certificate(pem.read_bytes()).subject
    node_name = str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value).removeprefix("system:node:")
    capacity, allocatable = node_resources(env)
    Api.from_kubeconfig(env.kubelet_conf).request(
        "PATCH",
        f"/api/v1/nodes/{node_name}/status",
        {"status": {"capacity": capacity, "allocatable": allocatable}},
        content_type=MERGE_PATCH,
    )


# --- init ----------------------------------------------------------------------------------------


def init(env: NodeEnv, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="kubeadm init")
    parser.add_argument("--config", type=Path, required=True)
    options, _ = parser.parse_known_args(argv)  # e.g. --ignore-preflight-errors: nothing to check here
    if env.admin_conf.exists() or state_path(env).exists():
        raise SimError(
            "[preflight] /etc/kubernetes/admin.conf already exists: this node is initialised (kubeadm reset first)"
        )
    documents = read_config(options.config)
    init_config = documents.get("InitConfiguration") or {}
    cluster_config = documents.get("ClusterConfiguration") or {}
    registration = init_config.get("nodeRegistration") or {}
    node_name = registration.get("name") or env.hostname
    asked = cluster_config.get("kubernetesVersion") or "stable"
    started = time.monotonic()
    print(f"[init] Using Kubernetes version: {asked} (simulated: the control plane runs {_testbed_version(env)})")
    print("[preflight] Running pre-flight checks")
    state = cluster.create(env, node_name, asked, _networking(cluster_config))
    print(f'[certs] Using certificateDir folder "{env.kubernetes_dir / "pki"}"')
    print(f'[kubeconfig] Writing "admin.conf", "controller-manager.conf", "scheduler.conf" to {env.kubernetes_dir}')
    print(f"[control-plane] Starting kube-apiserver (etcd prefix {state.etcd_prefix}), controller-manager, scheduler")
    cluster.start(env, state)
    print(f"[apiclient] All control plane components are healthy after {time.monotonic() - started:.1f}s")
    phase_config = _phase_config(env, state, init_config)
    admin = str(env.admin_conf)
    for phase in (("bootstrap-token",), ("upload-config", "all"), ("addon", "all")):
        sys.stdout.write(
            _real_kubeadm(env, "init", "phase", *phase, f"--config={phase_config}", f"--kubeconfig={admin}")
        )
    version = _testbed_version(env)
    token = _real_kubeadm(
        env,
        "token",
        "create",
        f"--kubeconfig={admin}",
        "--ttl=10m",
        "--description=kubelet bootstrap of the control-plane node",
    ).strip()
    _tls_bootstrap(env, state.server, _ca_pem(env), token, node_name)
    _register_node(env, node_name, version)
    _mark_control_plane(env, node_name, registration)
    print(f"[mark-control-plane] Marking the node {node_name} as control-plane")
    print("\nYour Kubernetes control-plane has initialized successfully!\n")
    print(f"To start using your cluster:\n\n  export KUBECONFIG={admin}\n")
    print("Then you can join any number of worker nodes by running the following on each as root:\n")
    print(_real_kubeadm(env, "token", "create", f"--kubeconfig={admin}", "--print-join-command").strip())


def _ca_pem(env: NodeEnv) -> bytes:
    return (env.kubernetes_dir / "pki" / "ca.crt").read_bytes()


def _mark_control_plane(env: NodeEnv, node_name: str, registration: dict[str, Any]) -> None:
    taints = registration.get("taints")
    if taints is None:
        taints = [{"key": CONTROL_PLANE_LABEL, "effect": "NoSchedule"}]
    patch = {
        "metadata": {
            "labels": {CONTROL_PLANE_LABEL: "", "node.kubernetes.io/exclude-from-external-load-balancers": ""}
        },
        "spec": {"taints": taints or None},
    }
    cluster.admin_api(env).request("PATCH", f"/api/v1/nodes/{node_name}", patch, content_type=MERGE_PATCH)


# --- join ----------------------------------------------------------------------------------------


def _discover(endpoint: str, token: str, ca_hashes: list[str], skip_ca_verification: bool) -> bytes:
    """Token discovery: returns the cluster CA, trusted because cluster-info is signed with the token
    and the CA matches a pinned hash."""
    token_id, _, secret = token.partition(".")
    if not token_id or not secret:
        raise SimError(f"the token {token!r} is not of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}")
    insecure = Api(f"https://{endpoint}", ca_pem=None)

    def signed_cluster_info() -> tuple[str, str] | None:
        cluster_info = insecure.request("GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
        signature = (cluster_info.get("data") or {}).get(f"jws-kubeconfig-{token_id}")
        return (cluster_info["data"]["kubeconfig"], signature) if signature else None

    kubeconfig, signature = poll(signed_cluster_info, f"cluster-info signed for token {token_id}", timeout=60)
    header, _, mac = signature.partition("..")
    payload = base64.urlsafe_b64encode(kubeconfig.encode()).rstrip(b"=").decode()
    expected = (
        base64.urlsafe_b64encode(hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
        .rstrip(b"=")
        .decode()
    )
    if not hmac.compare_digest(expected, mac):
        raise SimError("cluster-info is not signed with this token: the token is wrong or expired")
    ca_pem = base64.b64decode(yaml.safe_load(kubeconfig)["clusters"][0]["cluster"]["certificate-authority-data"])
    if not skip_ca_verification:
        public_key = x509.load_pem_x509_certificate(ca_pem).public_key()
        spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        actual = f"sha256:{hashlib.sha256(spki).hexdigest()}"
        if actual not in ca_hashes:
            raise SimError(f"the cluster CA {actual} matches none of the pinned --discovery-token-ca-cert-hash values")
    return ca_pem


def join(env: NodeEnv, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="kubeadm join")
    parser.add_argument("endpoint", nargs="?")
    parser.add_argument("--token")
    parser.add_argument("--discovery-token", dest="discovery_token")
    parser.add_argument("--discovery-token-ca-cert-hash", action="append", default=[])
    parser.add_argument("--discovery-token-unsafe-skip-ca-verification", action="store_true")
    parser.add_argument("--node-name")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--control-plane", action="store_true")
    options, _ = parser.parse_known_args(argv)
    if options.control_plane:
        raise SimError("joining more control-plane nodes is not simulated")
    endpoint, token, hashes, node_name = (
        options.endpoint,
        options.discovery_token or options.token,
        options.discovery_token_ca_cert_hash,
        options.node_name,
    )
    if options.config is not None:
        join_config = read_config(options.config).get("JoinConfiguration") or {}
        bootstrap = (join_config.get("discovery") or {}).get("bootstrapToken") or {}
        endpoint = endpoint or bootstrap.get("apiServerEndpoint")
        token = token or bootstrap.get("token")
        hashes = hashes or bootstrap.get("caCertHashes") or []
        options.discovery_token_unsafe_skip_ca_verification |= bool(bootstrap.get("unsafeSkipCAVerification"))
        node_name = node_name or (join_config.get("nodeRegistration") or {}).get("name")
    if not endpoint or not token:
        raise SimError("kubeadm join needs the API server endpoint and --token (or a JoinConfiguration)")
    if not hashes and not options.discovery_token_unsafe_skip_ca_verification:
        raise SimError("give --discovery-token-ca-cert-hash, or --discovery-token-unsafe-skip-ca-verification")
    if env.kubelet_conf.exists():
        raise SimError(
            "[preflight] /etc/kubernetes/kubelet.conf already exists: this node has joined (kubeadm reset first)"
        )
    node_name = node_name or env.hostname
    print("[preflight] Running pre-flight checks")
    print(f"[discovery] Fetching cluster-info from https://{endpoint}")
    ca_pem = _discover(endpoint, token, hashes, options.discovery_token_unsafe_skip_ca_verification)
    print("[discovery] Cluster info signature and contents are valid and the CA is pinned")
    print("[kubelet-start] Performing the TLS bootstrap")
    _tls_bootstrap(env, f"https://{endpoint}", ca_pem, token, node_name)
    version = _testbed_version(env)
    _register_node(env, node_name, version)
    print(f"\nThis node has joined the cluster:\n* Node {node_name} registered with the control plane.")


# --- reset ---------------------------------------------------------------------------------------


def reset(env: NodeEnv, argv: list[str]) -> None:
    stopped = cluster.stop(env)
    state = ClusterState.load(env)
    if state is not None:
        delete_etcd_prefix(env.etcd_url, state.etcd_prefix)
    tools.set_unit_active(env, "kubelet", False)
    for path in (env.kubernetes_dir / "pki", env.kubelet_pki, env.sim_dir):
        shutil.rmtree(path, ignore_errors=True)
    for conf in env.kubernetes_dir.glob("*.conf"):
        conf.unlink()
    print(f"[reset] Stopped {', '.join(stopped) or 'nothing'}; removed the node's Kubernetes files")


def main(argv: list[str]) -> None:
    """init, join and reset; `version` and `token` go straight to the real binary (see __main__)."""
    env = NodeEnv.from_environ()
    handlers = {"init": init, "join": join, "reset": reset}
    if not argv or argv[0] not in handlers:
        raise SimError(
            f"kubeadm {' '.join(argv[:1])} is not simulated in the testbed (init, join, reset, token, version are)"
        )
    handlers[argv[0]](env, argv[1:])

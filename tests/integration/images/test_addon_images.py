"""The inner cluster's addon images (vk8s.images.builders.addon_images_for) are images containerd
takes and runs: a private containerd imports every archive under its ref; vk8s-netd makes a vNode's
network in the container's own network namespace; the Go binaries start. And vk8s-netd's network
carries pod traffic between two vNodes: two network namespaces on a bridge, pods made by the CNI
bridge plugin from the config netd wrote, HTTP across the VXLAN routes, masquerading to the outside."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.bootstrap import logic
from tests.integration.images.test_import import Ctr, ctr  # noqa: F401 - ctr is a fixture
from vk8s.images.builders import NETD_SCRIPT, addon_images_for
from vk8s.testbed.config import pinned_versions
from vk8s.testbed.lifecycle import ensure_binaries

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containerd, runc and network namespaces need root")
CNI_BIN = Path("/usr/lib/cni")
POD_CIDR, SERVICE_CIDR = "100.64.0.0/16", "10.64.0.0/20"


def node(name: str, pod_cidr: str | None, ip: str) -> dict[str, object]:
    spec = {"podCIDR": pod_cidr} if pod_cidr else {}
    return {"metadata": {"name": name}, "spec": spec, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


NODES: dict[str, Any] = {
    "kind": "NodeList",
    "items": [
        node("vnode-0", "100.64.0.0/24", "10.250.0.2"),
        node("vnode-1", "100.64.1.0/24", "10.250.0.3"),
        node("vnode-2", "100.64.2.0/24", "10.250.0.4"),
        node("vnode-3", None, "10.250.0.5"),  # no podCIDR yet: no route
    ],
}


@pytest.fixture(scope="module")
def archives() -> dict[str, Path]:
    """ref -> archive of every addon image (built or reused from the cache)."""
    return addon_images_for(pinned_versions()["KUBERNETES_VERSION"])


def run_in(ctr: Ctr, ref: str, *argv: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    name = f"vk8s-addon-{uuid.uuid4().hex[:8]}"
    base = ("--rm", "--cgroup", "", "--runc-root", ctr.runc_root, "--fifo-dir", ctr.fifo_dir)
    return ctr("run", *base, *options, ref, name, *argv)


def test_every_addon_archive_is_imported_under_its_ref(ctr: Ctr, archives: dict[str, Path]) -> None:
    for archive in archives.values():
        result = ctr("images", "import", archive)
        assert result.returncode == 0, result.stderr

    listed = ctr("images", "list", "--quiet")

    assert set(listed.stdout.split()) == set(archives)
    assert set(archives) == {logic.NETD_IMAGE, logic.GPU_PLUGIN_IMAGE, logic.LOCAL_PATH_PROVISIONER_IMAGE, logic.TOOLBOX_IMAGE}


def test_netd_makes_a_vnode_network_in_its_container(ctr: Ctr, archives: dict[str, Path], tmp_path: Path) -> None:
    """A privileged container (its own network namespace, as a vNode pod) with an eth0 on 10.250.0.2:
    one pass writes the CNI config and creates the VXLAN routes and the masquerade chain, with the
    image's own ip, bridge, jq and iptables; a second pass changes nothing."""
    assert ctr("images", "import", archives[logic.NETD_IMAGE]).returncode == 0
    (tmp_path / "nodes.json").write_text(json.dumps(NODES))
    setup = "ip link add eth0 mtu 1450 type veth peer name eth1 && ip addr add 10.250.0.2/24 dev eth0 && ip link set eth0 up"
    netd = "vk8s-netd --once --nodes-json /in/nodes.json"
    show = "cat /tmp/net.d/10-vk8s.conflist; ip -d -o link show vk8s.1; ip -4 route show dev vk8s.1; iptables -t nat -S"
    env = {"NODE_NAME": "vnode-0", "POD_CIDR": POD_CIDR, "SERVICE_CIDR": SERVICE_CIDR, "CNI_CONF_DIR": "/tmp/net.d"}
    options = (
        "--privileged",
        "--mount", f"type=bind,src={tmp_path},dst=/in,options=rbind:ro",
        *(f"--env={key}={value}" for key, value in env.items()),
    )  # fmt: skip

    result = run_in(
        ctr, logic.NETD_IMAGE, "bash", "-c",
        f"set -e; {setup}; mkdir /tmp/net.d; {netd}; echo SECOND >&2; {netd}; {show}",
        options=options,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    first, second = result.stderr.split("SECOND\n")
    assert "wrote /tmp/net.d/10-vk8s.conflist for pods in 100.64.0.0/24 (MTU 1400)" in first
    assert second.strip() == "", second  # nothing left to change
    conflist = json.loads(result.stdout[: result.stdout.index("\n}\n") + 2])
    bridge = conflist["plugins"][0]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "100.64.0.0/24"}]] and bridge["mtu"] == 1400
    assert "vxlan id 1 local 10.250.0.2 dev eth0" in result.stdout
    assert "100.64.1.0/24 via 100.64.1.0 onlink" in result.stdout
    assert "100.64.2.0/24 via 100.64.2.0 onlink" in result.stdout
    assert f"-A VK8S-NETD-MASQ -d {SERVICE_CIDR} -j RETURN" in result.stdout
    assert "-A VK8S-NETD-MASQ -j MASQUERADE" in result.stdout
    assert '-A POSTROUTING -m comment --comment "vk8s-netd: masquerade pod traffic leaving the cluster" -j VK8S-NETD-MASQ' in result.stdout


def test_the_go_binaries_start_in_their_images(ctr: Ctr, archives: dict[str, Path]) -> None:
    for ref in (logic.GPU_PLUGIN_IMAGE, logic.LOCAL_PATH_PROVISIONER_IMAGE, logic.NETD_IMAGE):
        assert ctr("images", "import", archives[ref]).returncode == 0

    provisioner = run_in(ctr, logic.LOCAL_PATH_PROVISIONER_IMAGE, "local-path-provisioner", "--version")
    plugin = run_in(ctr, logic.GPU_PLUGIN_IMAGE, "/vk8s-gpu-plugin", "--help")
    netd = run_in(ctr, logic.NETD_IMAGE, "vk8s-netd", "--version")

    assert provisioner.returncode == 0, provisioner.stderr
    assert provisioner.stdout.strip() == f"local-path-provisioner version {logic.LOCAL_PATH_PROVISIONER_IMAGE.rpartition(':')[2]}"
    assert plugin.returncode == 0 and "-from-env" in plugin.stderr, plugin.stderr
    assert netd.stdout.strip() == "vk8s-netd " + logic.NETD_IMAGE.rpartition(":")[2].rsplit("-", 1)[0]


def test_the_manifests_pass_the_api_servers_validation(kube_config_path: Path) -> None:
    """Server-side dry runs with strict field validation, as `vk8s-node apply` applies them."""
    kubectl = [str(ensure_binaries() / "kubectl"), "--kubeconfig", str(kube_config_path)]
    version = pinned_versions()["KUBERNETES_VERSION"]
    manifests = {
        "cni": logic.cni_manifest(version, POD_CIDR, SERVICE_CIDR),
        "gpu": logic.device_plugin_manifest(version),
        "storage": logic.storage_manifest(version),
    }
    # A dry run creates no namespace, and the storage objects live in their own.
    created = subprocess.run([*kubectl, "create", "namespace", "local-path-storage"], capture_output=True, text=True)
    try:
        for name, manifest in manifests.items():
            result = subprocess.run(
                [*kubectl, "apply", "--server-side", "--dry-run=server", "--validate=strict",
                 "--field-manager=vk8s-bootstrap", "-f", "-"],
                input=manifest, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert result.returncode == 0, f"{name}: {result.stderr}"
            assert "(server dry run)" in result.stdout
    finally:
        if created.returncode == 0:
            subprocess.run([*kubectl, "delete", "namespace", "local-path-storage", "--wait=false"], capture_output=True)


# Two vNodes on one bridge, as the real host tier and a host CNI put them, each running vk8s-netd.


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def in_netns(netns: str, *argv: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


@pytest.fixture
def vnodes(tmp_path: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """(hub, [vNode netns], [pod netns]): the vNodes 10.250.0.2 and .3 on a bridge in the hub."""
    if not CNI_BIN.joinpath("bridge").is_file() or shutil.which("jq") is None:
        pytest.skip("needs Debian's containernetworking-plugins and jq")
    tag = uuid.uuid4().hex[:6]
    hub, nodes, pods = f"netd-hub-{tag}", [f"netd-n0-{tag}", f"netd-n1-{tag}"], [f"netd-p0-{tag}", f"netd-p1-{tag}"]
    try:
        for netns in [hub, *nodes, *pods]:
            ip("netns", "add", netns)
        ip("-n", hub, "link", "add", "br0", "type", "bridge")
        ip("-n", hub, "link", "set", "br0", "up")
        for index, netns in enumerate(nodes):
            ip("-n", hub, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", netns)
            ip("-n", hub, "link", "set", f"v{index}", "master", "br0", "up")
            ip("-n", netns, "link", "set", "eth0", "mtu", "1450", "up")
            ip("-n", netns, "addr", "add", f"10.250.0.{index + 2}/24", "dev", "eth0")
            ip("-n", netns, "link", "set", "lo", "up")
            assert in_netns(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1").returncode == 0
        for netns in pods:
            ip("-n", netns, "link", "set", "lo", "up")
        yield hub, nodes, pods
    finally:
        for netns in [*pods, *nodes, hub]:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


def run_netd(netns: str, name: str, nodes: Path, conf_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NODE_NAME": name,
        "POD_CIDR": POD_CIDR,
        "SERVICE_CIDR": SERVICE_CIDR,
        "CNI_CONF_DIR": str(conf_dir),
        "CNI_BIN_DIR": str(CNI_BIN),
    }
    return in_netns(netns, str(NETD_SCRIPT), "--once", "--nodes-json", str(nodes), env=env)


def add_pod(node_netns: str, pod_netns: str, conf_dir: Path, data_dir: Path) -> str:
    """Runs the bridge plugin of netd's conflist for a pod, as containerd would; returns its IP."""
    conflist = json.loads((conf_dir / "10-vk8s.conflist").read_text())
    bridge = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0]}
    bridge["ipam"] = {**bridge["ipam"], "dataDir": str(data_dir)}  # not the host's /var/lib/cni
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": pod_netns,
        "CNI_NETNS": f"/run/netns/{pod_netns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(CNI_BIN),
        "PATH": os.environ["PATH"],
    }
    result = subprocess.run(
        ["ip", "netns", "exec", node_netns, str(CNI_BIN / "bridge")],
        input=json.dumps(bridge), capture_output=True, text=True, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return str(json.loads(result.stdout)["ips"][0]["address"]).split("/")[0]


def http_get(netns: str, url: str) -> str:
    result = in_netns(netns, "curl", "--silent", "--max-time", "5", "--output", "/dev/null", "--write-out", "%{http_code} %{local_ip}", url)
    assert result.returncode == 0, f"{url} from {netns}: curl exit {result.returncode} {result.stderr}"
    return result.stdout


@pytest.fixture
def http_servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    servers: list[subprocess.Popen[bytes]] = []
    yield servers
    for server in servers:
        server.terminate()
        server.wait(timeout=10)


def serve(netns: str, port: int, servers: list[subprocess.Popen[bytes]]) -> None:
    argv = ["ip", "netns", "exec", netns, "python3", "-m", "http.server", str(port), "--bind", "0.0.0.0"]
    servers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def wait_for(netns: str, url: str) -> None:
    deadline = time.monotonic() + 15
    while in_netns(netns, "curl", "--silent", "--max-time", "1", "--output", "/dev/null", url).returncode != 0:
        assert time.monotonic() < deadline, f"{url} does not answer"
        time.sleep(0.2)


def test_pods_on_two_vnodes_reach_each_other_over_netd_routes(
    vnodes: tuple[str, list[str], list[str]], tmp_path: Path, http_servers: list[subprocess.Popen[bytes]]
) -> None:
    _, (node0, node1), (pod0, pod1) = vnodes
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps(NODES))
    confs = [tmp_path / "net.d-0", tmp_path / "net.d-1"]
    for netns, name, conf in zip((node0, node1), ("vnode-0", "vnode-1"), confs, strict=True):
        conf.mkdir()
        result = run_netd(netns, name, nodes, conf)
        assert result.returncode == 0, result.stderr
    ip0 = add_pod(node0, pod0, confs[0], tmp_path / "ipam-0")
    ip1 = add_pod(node1, pod1, confs[1], tmp_path / "ipam-1")
    assert (ip0, ip1) == ("100.64.0.2", "100.64.1.2")
    serve(pod1, 8080, http_servers)
    serve(node1, 8081, http_servers)
    wait_for(node1, f"http://{ip1}:8080/")

    # Pod to pod across vNodes keeps its address; node to remote pod too (from its VXLAN address).
    assert http_get(pod0, f"http://{ip1}:8080/") == f"200 {ip0}"
    assert http_get(node0, f"http://{ip1}:8080/") == "200 100.64.0.0"
    # Pod to the other vNode's own address: outside the cluster CIDRs, so masqueraded.
    assert http_get(pod0, "http://10.250.0.3:8081/").startswith("200 ")
    masq = in_netns(node0, "iptables", "-t", "nat", "-L", "VK8S-NETD-MASQ", "-v", "-n", "-x").stdout.splitlines()[-1].split()
    assert masq[2] == "MASQUERADE" and int(masq[0]) >= 1, masq

    # vnode-2 is gone: its route goes, vnode-1's stays.
    nodes.write_text(json.dumps({**NODES, "items": [n for n in NODES["items"] if n["metadata"]["name"] != "vnode-2"]}))
    result = run_netd(node0, "vnode-0", nodes, confs[0])
    assert "pods in 100.64.2.0/24: route removed, its node is gone" in result.stderr
    routes = in_netns(node0, "ip", "-4", "route", "show", "dev", "vk8s.1").stdout
    assert "100.64.2.0/24" not in routes and "100.64.1.0/24 via 100.64.1.0 onlink" in routes
    assert http_get(pod0, f"http://{ip1}:8080/") == f"200 {ip0}"

"""The kink image boots for real: a private containerd (own root, state, socket and runc root in a
temporary directory) imports the archive and runs it as a privileged pod would get it (the cgroup
hierarchies at /sys/fs/cgroup, tmpfs /run and /tmp, a volume for /var/lib/containerd, its own
network namespace); systemd comes up, containerd runs inside, and the preload unit has put kubeadm's
images into the vNode's containerd. Everything made here is removed again: the container, its
mounts, the network namespace and every cgroup directory, in each hierarchy."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from services.bootstrap.logic import ClusterNetwork, kubeadm_init_config
from vk8s.images.builders import build_host_images
from vk8s.images.kink import PRELOAD_MARKER, build_kink_image, kink_ref, read_build_record
from vk8s.testbed.config import pinned_versions
from vk8s.testbed.lifecycle import ensure_binaries
from vk8s.testbed.real import preflight

pytestmark = pytest.mark.real

CGROUP = Path("/sys/fs/cgroup")
BOOT_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
VNODE_IP = "10.251.7.2"
CONTAINERD_CONFIG = """version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Root here may not lower oom_score_adj; the CRI plugin would otherwise fail every sandbox.
  restrict_oom_score_adj = true
"""


def problem() -> str | None:
    if reason := preflight.problem():
        return reason
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is missing (it makes the image's Debian base)"
    if not (CGROUP / "cpu").is_dir():
        return "no cgroup v1 hierarchies at /sys/fs/cgroup (this test covers the v1 fix-ups)"
    return None


@pytest.fixture(scope="module", autouse=True)
def machine_can_run_it() -> None:
    if reason := problem():
        if os.environ.get("CI"):
            pytest.fail(f"CI must boot the kink image, but this machine cannot: {reason}")
        pytest.skip(f"this machine cannot boot the kink image: {reason}")


@pytest.fixture(scope="module")
def kubernetes_version() -> str:
    return "v" + pinned_versions()["KUBERNETES_VERSION"]


@pytest.fixture(scope="module")
def preloaded(kubernetes_version: str) -> dict[str, Path]:
    return build_host_images(ensure_binaries(), kubernetes_version)


@pytest.fixture(scope="module")
def kink_archive(kubernetes_version: str, preloaded: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = build_kink_image(ensure_binaries(), kubernetes_version, preloaded, False, tmp_path_factory.mktemp("kink"))
    record = read_build_record(archive)
    print(f"kink image {record.ref}: {record.size_bytes / 1e6:.0f} MB, built in {record.build_seconds}s")
    return archive


def top_level_cgroups() -> dict[str, set[str]]:
    """The directories at the top of every cgroup hierarchy of this (the host's) mount namespace."""
    return {
        hierarchy.name: {entry.name for entry in os.scandir(hierarchy) if entry.is_dir()}
        for hierarchy in CGROUP.iterdir()
        if hierarchy.is_dir() and not hierarchy.is_symlink()
    }


def new_foreign_cgroups(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, set[str]]:
    """Top-level cgroups that appeared meanwhile, except the vk8s-* roots tests (this one and others
    running beside it) make: what an unscoped hierarchy in a vNode would leave (kubelet, system.slice...)."""
    grown = {h: {d for d in after[h] - before.get(h, set()) if not d.startswith("vk8s-")} for h in after}
    return {h: dirs for h, dirs in grown.items() if dirs}


def remove_cgroup(path: Path) -> None:
    """rmdir, deepest first (a cgroup directory is removed only when it has no children)."""
    if not path.is_dir():
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            remove_cgroup(Path(entry.path))
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY while the last task of it is still exiting
            time.sleep(0.1)
    path.rmdir()


def mounts_under(directory: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line.split()[4] for line in text.splitlines() if line.split()[4].startswith(str(directory))]


@dataclass
class Containerd:
    """A containerd of its own: root, state, socket, runc root and the vNode's /var/lib/containerd in `root`."""

    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    def start(self) -> None:
        config = self.root / "config.toml"
        config.write_text(CONTAINERD_CONFIG.format(root=self.root))
        with (self.root / "containerd.log").open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {(self.root / 'containerd.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 300, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), *args], input=stdin, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {result.returncode}: {result.stdout}{result.stderr}")
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class VNode:
    containerd: Containerd
    name: str
    cgroup: str  # the container's cgroup path in every hierarchy
    tag: str

    def exec(
        self, *argv: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.containerd.ctr(
            "task", "exec", "--exec-id", f"x{secrets.token_hex(4)}", self.name, *argv, check=check, timeout=timeout, stdin=stdin
        )

    def status(self) -> str:
        result = self.containerd.ctr("task", "ls", check=False)
        for line in result.stdout.splitlines()[1:]:
            words = line.split()
            if words and words[0] == self.name:
                return words[-1]
        return ""


@pytest.fixture(scope="module")
def containerd(kink_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A private containerd with the kink image imported; stopped, and its directory removed, after the module."""
    work = tmp_path_factory.mktemp("containerd")
    daemon = Containerd(work)
    try:
        daemon.start()
        started = time.monotonic()
        daemon.ctr("images", "import", "--all-platforms", str(kink_archive))
        print(f"imported {kink_archive.name} in {time.monotonic() - started:.1f}s")
        yield daemon
    finally:
        daemon.stop()
        for mountpoint in reversed(mounts_under(work)):
            subprocess.run(["umount", "--lazy", mountpoint], check=False)
        shutil.rmtree(work, ignore_errors=True)
        assert mounts_under(work) == [], "mounts of the test are left"


@pytest.fixture
def vnode(containerd: Containerd, kubernetes_version: str) -> Iterator[VNode]:
    """The kink image running privileged, as a vNode pod; torn down and swept afterwards."""
    tag = secrets.token_hex(4)
    name, netns, parent = f"kink-{tag}", f"vk8s-kink-{tag}", f"vk8s-kink-test-{tag}"
    cgroup = f"/{parent}/{name}"
    volume = containerd.root / f"volume-{tag}"
    before = top_level_cgroups()
    try:
        # The pod's network: one interface with an address and a default route, in a namespace of
        # its own (the root namespace gets nothing).
        subprocess.run(["ip", "netns", "add", netns], check=True)
        for command in (
            "link add eth0 type veth peer name peer0",
            f"addr add {VNODE_IP}/24 dev eth0",
            "link set lo up",
            "link set peer0 up",
            "link set eth0 up",
            "route add default via 10.251.7.1 dev eth0 onlink",
        ):
            subprocess.run(["ip", "-n", netns, *command.split()], check=True)
        volume.mkdir()
        containerd.ctr(
            "run",
            "--detach",
            "--privileged",
            "--runc-root",
            str(containerd.root / "runc"),
            "--cgroup",
            cgroup,
            "--with-ns",
            f"network:/var/run/netns/{netns}",
            "--log-uri",
            f"file://{containerd.root / f'console-{tag}.log'}",
            "--mount",
            "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=rw:nosuid:nodev:noexec:relatime",
            "--mount",
            "type=tmpfs,src=tmpfs,dst=/run,options=rw:nosuid:nodev:mode=755",
            "--mount",
            "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev",
            # overlayfs snapshots cannot live on the container's own overlayfs: a volume, as in the pod.
            "--mount",
            f"type=bind,src={volume},dst=/var/lib/containerd,options=rbind:rw",
            kink_ref(kubernetes_version),
            name,
        )
        yield VNode(containerd, name, cgroup, tag)
    finally:
        teardown(containerd, name, netns, parent, volume, before)


def teardown(containerd: Containerd, name: str, netns: str, parent: str, volume: Path, before: dict[str, set[str]]) -> None:
    if containerd.ctr("task", "ls", "-q", check=False).stdout.split().count(name):
        containerd.ctr("task", "kill", "--signal", "SIGRTMIN+3", name, check=False)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and VNode(containerd, name, "", "").status() != "STOPPED":
            time.sleep(0.2)
        containerd.ctr("task", "kill", "--signal", "SIGKILL", name, check=False)
        containerd.ctr("task", "delete", "--force", name, check=False)
    containerd.ctr("container", "delete", name, check=False)
    subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)
    for hierarchy in CGROUP.iterdir():
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            remove_cgroup(hierarchy / parent)
    shutil.rmtree(volume, ignore_errors=True)
    assert mounts_under(volume) == [], "mounts of the vNode are left"
    after = top_level_cgroups()
    assert not [h for h in after if parent in after[h]], f"the vNode's cgroup {parent} is left"
    assert new_foreign_cgroups(before, after) == {}, "the vNode made cgroups outside its own"
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def wait_booted(vnode: VNode) -> str:
    """systemd's state once it has finished booting (`running`, or `degraded` naming failed units)."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        result = vnode.exec("systemctl", "is-system-running", "--wait", check=False, timeout=BOOT_TIMEOUT)
        state = result.stdout.strip()
        if state in ("running", "degraded"):
            return state
        if time.monotonic() > deadline or vnode.status() == "STOPPED":
            console = (vnode.containerd.root / f"console-{vnode.tag}.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"systemd did not finish booting ({state!r}, {result.stderr}):\n{console}")
        time.sleep(0.5)


def test_the_vnode_boots_with_its_images_preloaded(vnode: VNode, preloaded: dict[str, Path]) -> None:
    started = time.monotonic()
    state = wait_booted(vnode)
    failed = vnode.exec("systemctl", "--failed", "--no-legend", "--plain", check=False).stdout
    assert state == "running", f"systemd is {state}; failed units:\n{failed}"
    print(f"systemd booted in {time.monotonic() - started:.1f}s")

    assert vnode.exec("systemctl", "is-active", "containerd", "vk8s-preload-images").stdout.split() == [
        "active",
        "active",
    ]
    assert vnode.exec("cat", PRELOAD_MARKER).stdout.split() == sorted(preloaded)
    listing = vnode.exec("ctr", "--namespace", "k8s.io", "images", "ls").stdout.splitlines()
    refs = {line.split()[0]: line for line in listing[1:]}
    for ref in preloaded:
        assert ref in refs, f"{ref} is not in the vNode's containerd: {sorted(refs)}"
        assert "io.cri-containerd.pinned=pinned" in refs[ref]
    # The CRI plugin sees them (what kubeadm's preflight and the kubelet ask).
    cri = vnode.exec("ctr", "--namespace", "k8s.io", "plugins", "ls").stdout
    assert re.search(r"io\.containerd\.grpc\.v1\s+cri\s+.*\bok\b", cri), cri


def test_the_vnode_keeps_to_its_own_cgroups(vnode: VNode) -> None:
    wait_booted(vnode)
    # systemd's units are below the pod's cgroup, in every hierarchy it mounted.
    for hierarchy in ("systemd", "cpu", "memory", "pids"):
        assert (CGROUP / hierarchy / vnode.cgroup.lstrip("/") / "system.slice" / "containerd.service").is_dir(), hierarchy
        assert (CGROUP / hierarchy / vnode.cgroup.lstrip("/") / "kubelet").is_dir(), hierarchy
    # Inside: only the hierarchies the runtime scoped, and no unified (cgroup2) tree at all.
    mounted = vnode.exec("findmnt", "--list", "--noheadings", "--output", "TARGET,FSTYPE,FSROOT").stdout
    cgroup_mounts = [line.split() for line in mounted.splitlines() if " cgroup" in line]
    assert cgroup_mounts, mounted
    assert not [m for m in cgroup_mounts if m[1] == "cgroup2"], mounted
    top = [m for m in cgroup_mounts if re.fullmatch(r"/sys/fs/cgroup/[^/]+", m[0])]
    assert top and all(m[2] == vnode.cgroup for m in top), top
    listed = {line.split()[0] for line in vnode.exec("cat", "/proc/cgroups").stdout.splitlines()[1:]}
    assert listed == {Path(m[0]).name for m in top} - {"systemd"}
    # The kubelet's cgroupRoot in each of them, as the kubelet of the vNode sees it.
    for target, _, _ in top:
        vnode.exec("test", "-d", f"{target}/kubelet")
        vnode.exec("mountpoint", "-q", f"{target}/kubelet")
    # The paths /proc/self/cgroup names resolve inside (what systemd and cAdvisor look up).
    own = vnode.exec("cat", "/proc/1/cgroup").stdout
    assert f"cpu:{vnode.cgroup}/init.scope" in own or f"cpu:{vnode.cgroup}" in own, own
    vnode.exec("test", "-d", f"/sys/fs/cgroup/cpu{vnode.cgroup}/system.slice")
    # systemd inside kept off the host's unified (cgroup2) tree: nothing below the pod's cgroup there.
    unified = CGROUP / "unified" / vnode.cgroup.lstrip("/")
    if unified.is_dir():
        assert [e.name for e in os.scandir(unified) if e.is_dir()] == [], "the vNode wrote into the unified tree"
    machine_id = vnode.exec("cat", "/etc/machine-id").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), machine_id


def test_the_vnode_stops_on_sigrtmin3(vnode: VNode) -> None:
    wait_booted(vnode)
    started = time.monotonic()
    vnode.containerd.ctr("task", "kill", "--signal", "SIGRTMIN+3", vnode.name)
    while vnode.status() != "STOPPED":
        assert time.monotonic() - started < STOP_TIMEOUT, "systemd did not halt on SIGRTMIN+3"
        time.sleep(0.1)
    print(f"halted in {time.monotonic() - started:.1f}s")


# What the bootstrap's kubeadm config (services/bootstrap/logic.py) needs on top of its own for this
# image on a cgroup v1 host; deploy/images/kink/local/README.md says why.
KUBELET_CONFIGURATION = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "cgroupDriver": "cgroupfs",
    "cgroupRoot": "/kubelet",
    "failCgroupV1": False,
    "failSwapOn": False,
    "imageGCHighThresholdPercent": 100,
    # As vk8s-node's drop-in: the disk is the host's, shared by every vNode; the host's kubelet
    # watches it. Left at the defaults, a host with under 15% free evicts the inner pods.
    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
}
# nf_conntrack_max is the host's (not per network namespace): kube-proxy's write of it fails with
# "permission denied" and kube-proxy exits, unless told to leave it alone.
KUBE_PROXY_CONFIGURATION = {
    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
    "kind": "KubeProxyConfiguration",
    "conntrack": {"maxPerCore": 0},
}
BRIDGE_CNI = {
    "cniVersion": "1.0.0",
    "name": "kink-test",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def with_requirements(config: str) -> str:
    """The bootstrap's kubeadm config with what this image needs merged in (whatever it has already)."""
    documents = list(yaml.safe_load_all(config))
    kinds = {document["kind"]: document for document in documents}
    kinds["InitConfiguration"].setdefault("nodeRegistration", {})["imagePullPolicy"] = "Never"
    for required in (KUBELET_CONFIGURATION, KUBE_PROXY_CONFIGURATION):
        document = kinds.get(required["kind"])
        if document is None:
            documents.append(dict(required))
            continue
        for key, value in required.items():
            if isinstance(value, dict):
                document.setdefault(key, {}).update(value)
            else:
                document[key] = value
    return yaml.safe_dump_all(documents, sort_keys=False)


def test_kubeadm_init_runs_on_the_preloaded_images(vnode: VNode, kubernetes_version: str) -> None:
    """No registry is reachable: every image kubeadm and its addons run comes from the preload."""
    wait_booted(vnode)
    node = f"kink-{vnode.tag}"
    config = with_requirements(
        kubeadm_init_config(
            kubeadm_version=kubernetes_version,
            node_name=node,
            network=ClusterNetwork(VNODE_IP, "10.244.0.0/16", "10.96.0.0/12"),
            cluster_name="kink-test",
            schedulable_master=True,
        )
    )
    vnode.exec("sh", "-c", "mkdir -p /etc/vk8s && cat >/etc/vk8s/kubeadm.yaml", stdin=config)
    # What `vk8s-node prepare` does first; the pod names the host in a real vNode.
    vnode.exec("sysctl", "-w", "net.ipv4.ip_forward=1")
    vnode.exec("hostname", node)

    started = time.monotonic()
    result = vnode.exec("kubeadm", "init", "--config", "/etc/vk8s/kubeadm.yaml", check=False, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"kubeadm init in {time.monotonic() - started:.1f}s")

    vnode.exec("sh", "-c", "cat >/etc/cni/net.d/10-bridge.conflist", stdin=json.dumps(BRIDGE_CNI))
    kubectl = ("kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf")
    deadline = time.monotonic() + 180
    while True:
        pods = json.loads(vnode.exec(*kubectl, "get", "pods", "--all-namespaces", "--output", "json").stdout)["items"]
        ready = {p["metadata"]["name"]: p["status"].get("phase") == "Running" and all(
            c.get("ready") for c in p["status"].get("containerStatuses", [])
        ) for p in pods}
        nodes = json.loads(vnode.exec(*kubectl, "get", "nodes", "--output", "json").stdout)["items"]
        node_ready = [c["status"] for n in nodes for c in n["status"]["conditions"] if c["type"] == "Ready"] == ["True"]
        if node_ready and len(ready) >= 7 and all(ready.values()):
            break
        if time.monotonic() > deadline:
            logs = [
                vnode.exec(*kubectl, "--namespace", "kube-system", "logs", "--tail", "15", name, check=False).stdout
                for name, ok in ready.items()
                if not ok
            ]
            events = vnode.exec(*kubectl, "get", "events", "--all-namespaces", check=False).stdout[-3000:]
            kubelet = vnode.exec("journalctl", "--unit", "kubelet", "--lines", "30", "--no-pager", check=False).stdout
            raise AssertionError(f"node ready: {node_ready}, pods: {ready}\n" + "\n".join([*logs, events, kubelet]))
        time.sleep(2)
    print(f"node and {len(ready)} pods ready {time.monotonic() - started:.1f}s after kubeadm init started")
    names = " ".join(ready)
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "coredns"):
        assert component in names, names
    # The inner pods' cgroups are below the vNode's /kubelet, not beside the host's.
    assert (CGROUP / "memory" / vnode.cgroup.lstrip("/") / "kubelet" / "kubepods").is_dir()

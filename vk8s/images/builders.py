"""The images a kubeadm cluster in vNodes runs (kubeadm's own list, at the refs it expects), the
inner cluster's addons (at the refs services/bootstrap/logic.py pins) and a toolbox for tests,
each built here from source or Debian packages and cached as an OCI archive."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from services.bootstrap import logic as bootstrap
from vk8s.images.cache import cache_key, cached, file_fingerprint
from vk8s.images.errors import ImageBuildError
from vk8s.images.oci import ImageConfig, split_ref, write_archive
from vk8s.images.progress import BuildSteps
from vk8s.images.sources import (
    deb_candidate_version,
    deb_contents,
    debian_rootfs,
    go_build,
    go_env,
    go_main_inputs,
    go_module_source,
    go_required,
    pause_binary,
    run,
)
from vk8s.testbed.config import REPO_ROOT

BUILT_FROM = "io.vk8s.built-from"
PATH_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# Enough of /etc for a static binary: numeric users resolve, and Go's resolver reads hosts first.
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    "etc/group": "root:x:0:\nnobody:x:65534:\n",
    "etc/nsswitch.conf": "hosts: files dns\n",
}
# kubeadm's static pods run these by name (`command: [kube-apiserver, ...]`), so they sit on PATH.
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# What kube-proxy execs at run time, in either of its iptables and nftables modes.
PROXY_PACKAGES = ("ca-certificates", "conntrack", "iptables", "nftables")
IMAGES_DIR = REPO_ROOT / "deploy" / "images"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
# etcd before 3.5: one module, whose root package is the server.
ETCD_SINGLE_MODULE = "go.etcd.io/etcd"
COREDNS_MODULE = "github.com/coredns/coredns"
CRI_TOOLS_MODULE = "sigs.k8s.io/cri-tools"
CRICTL_DIR = IMAGES_DIR / "crictl"
TOOLBOX_REPOSITORY = "vk8s.local/toolbox"
TOOLBOX_PACKAGE = "busybox-static"
# The inner cluster's addons (services/bootstrap/manifests): their refs are pinned in
# services/bootstrap/logic.py; each recipe below says which ref its inputs make.
NETD_REPOSITORY = "vk8s.local/vk8s-netd"
NETD_SCRIPT = IMAGES_DIR / "netd" / "vk8s-netd"
# What the script runs: bash, curl + jq for the API, ip/bridge, iptables-restore (nft, as the vNode's).
NETD_PACKAGES = ("bash", "ca-certificates", "curl", "iproute2", "iptables", "jq")
GPU_PLUGIN_REPOSITORY = "vk8s.local/vk8s-gpu-plugin"
GPU_PLUGIN_DIR = REPO_ROOT / "deploy" / "testbed" / "gpu-plugin"
LOCAL_PATH_REPOSITORY = "vk8s.local/local-path-provisioner"
LOCAL_PATH_MODULE = "github.com/rancher/local-path-provisioner"
LOCAL_PATH_DIR = IMAGES_DIR / "local-path-provisioner"


def kubeadm_image_refs(bin_dir: Path, version: str) -> list[str]:
    """The images `kubeadm init` of this Kubernetes version runs, as the kubeadm in `bin_dir` names them."""
    version = _v(version)
    kubeadm = _binary(bin_dir, "kubeadm")
    if (found := run([kubeadm, "version", "-o", "short"]).strip()) != version:
        raise ImageBuildError(f"{kubeadm} is {found}, not {version}")
    return run([kubeadm, "config", "images", "list", "--kubernetes-version", version]).split()


def build_host_images(bin_dir: Path, kubernetes_version: str, steps: BuildSteps | None = None) -> dict[str, Path]:
    """ref -> archive for every image kubeadm needs (control plane, etcd, CoreDNS, pause) and the
    toolbox; each a step of `steps` (else of its own progress, announced here)."""
    refs = kubeadm_image_refs(bin_dir, kubernetes_version)
    if steps is None:
        steps = BuildSteps(f"images of Kubernetes {_v(kubernetes_version)}", [*refs, toolbox_ref()])
        steps.announce()
    images = {ref: steps.run(ref, functools.partial(build_image, ref, bin_dir, kubernetes_version)) for ref in refs}
    ref, archive = steps.run(toolbox_ref(), toolbox_image)
    images[ref] = archive
    return images


def build_image(ref: str, bin_dir: Path, kubernetes_version: str) -> Path:
    """One of kubeadm's images, picked by the last part of its repository."""
    name = _name(ref)
    version = _v(kubernetes_version)
    if name in CONTROL_PLANE:
        return control_plane_image(ref, bin_dir, version)
    if name == "kube-proxy":
        return kube_proxy_image(ref, bin_dir, version)
    if name == "etcd":
        return etcd_image(ref)
    if name == "coredns":
        return coredns_image(ref)
    if name == "pause":
        return pause_image(ref, version)
    raise ImageBuildError(f"no recipe builds {ref}")


def control_plane_image(ref: str, bin_dir: Path, version: str) -> Path:
    name = _name(ref)
    binary = _binary(bin_dir, name)

    def build(tmp: Path) -> None:
        _check_version(binary, version)
        with _scratch() as root:
            _rootfs(root, {f"usr/local/bin/{name}": binary})
            config = ImageConfig(env=PATH_ENV, labels=_built_from(f"k8s.io/kubernetes {version} built from source"))
            write_archive(tmp, ref, [root], config)

    return cached(name, cache_key(version, [ref, file_fingerprint(binary)]), build)


def kube_proxy_image(ref: str, bin_dir: Path, version: str) -> Path:
    binary = _binary(bin_dir, "kube-proxy")
    base = debian_rootfs(PROXY_PACKAGES)

    def build(tmp: Path) -> None:
        _check_version(binary, version)
        with _scratch() as root:
            _rootfs(root, {"usr/local/bin/kube-proxy": binary}, etc=False)
            origin = f"k8s.io/kubernetes {version} built from source, on Debian {'+'.join(PROXY_PACKAGES)} (mmdebstrap)"
            write_archive(tmp, ref, [base, root], ImageConfig(env=PATH_ENV, labels=_built_from(origin)))

    # The base's path carries its own key, so a new base makes a new image.
    return cached("kube-proxy", cache_key(version, [ref, file_fingerprint(binary), str(base)]), build)


def etcd_image(ref: str) -> Path:
    # kubeadm tags etcd `<etcd version>-<image revision>`.
    version = "v" + split_ref(ref)[1].rsplit("-", 1)[0]
    module_dir, module, module_version = _etcd_module(version)
    if module_version == version:
        origin = f"{module} {version} built from source"
    else:
        origin = f"etcd {version}: {module} {module_version} (version.go: {version[1:]}) built from source"

    def build(tmp: Path) -> None:
        with _scratch() as work:
            binary = go_build(module_dir, module, module_version, module, work / "etcd")
            root = work / "rootfs"
            _rootfs(root, {"usr/local/bin/etcd": binary})
            write_archive(tmp, ref, [root], ImageConfig(env=PATH_ENV, labels=_built_from(origin)))

    return cached("etcd", cache_key(version, [ref, *go_main_inputs(module_dir)]), build)


def _etcd_module(version: str) -> tuple[Path, str, str]:
    """(module dir, module, its version) that build etcd `version`. From 3.5 that is etcd's server
    module at that version. Before, etcd was the one module go.etcd.io/etcd, which the module proxy
    serves only at pseudo-versions: deploy/images/etcd-<minor> pins the one Kubernetes pinned, and
    the build goes ahead only if its version/version.go says `version`."""
    minor = ".".join(version.removeprefix("v").split(".")[:2])
    module_dir = IMAGES_DIR / f"etcd-{minor}"
    if not module_dir.is_dir():
        return IMAGES_DIR / "etcd", ETCD_MODULE, version
    pinned = go_required(module_dir, ETCD_SINGLE_MODULE)
    if pinned is None:
        raise ImageBuildError(f"{module_dir / 'go.mod'} requires no {ETCD_SINGLE_MODULE}")
    version_go = go_module_source(ETCD_SINGLE_MODULE, pinned) / "version" / "version.go"
    said = re.search(r'^\s*Version\s*=\s*"([^"]+)"', version_go.read_text(), re.M)
    if said is None or f"v{said.group(1)}" != version:
        found = said.group(1) if said else "no Version"
        raise ImageBuildError(f"{module_dir.name} pins {ETCD_SINGLE_MODULE} {pinned}, whose version.go says {found}, not {version}")
    return module_dir, ETCD_SINGLE_MODULE, pinned


def coredns_image(ref: str) -> Path:
    # The tag is the release; before registry.k8s.io (kubeadm 1.21) it had no leading "v".
    version = "v" + split_ref(ref)[1].removeprefix("v")
    module_dir = IMAGES_DIR / "coredns"

    def build(tmp: Path) -> None:
        with _scratch() as work:
            binary = go_build(module_dir, COREDNS_MODULE, version, ".", work / "coredns")
            root = work / "rootfs"
            _rootfs(root, {"coredns": binary})
            # Root, unlike upstream's nonroot user with a file capability: kubeadm's Deployment adds
            # NET_BIND_SERVICE, which a root process keeps, so :53 binds without xattrs in the layer.
            origin = f"{COREDNS_MODULE} {version} built from source (deploy/images/coredns: kubeadm's plugins)"
            config = ImageConfig(entrypoint=["/coredns"], labels=_built_from(origin))
            write_archive(tmp, ref, [root], config)

    return cached("coredns", cache_key(version, [ref, *go_main_inputs(module_dir)]), build)


def pause_image(ref: str, kubernetes_version: str) -> Path:
    kubernetes_version = _v(kubernetes_version)
    tag = split_ref(ref)[1]

    def build(tmp: Path) -> None:
        with _scratch() as work:
            binary = pause_binary(kubernetes_version, tag, work / "pause")
            root = work / "rootfs"
            _rootfs(root, {"pause": binary}, etc=False)
            origin = f"k8s.io/kubernetes {kubernetes_version} build/pause/linux/pause.c, gcc -static"
            # As upstream's image: the sandbox process needs no privileges.
            config = ImageConfig(entrypoint=["/pause"], user="65535:65535", labels=_built_from(origin))
            write_archive(tmp, ref, [root], config)

    return cached("pause", cache_key(tag, [ref, kubernetes_version]), build)


def crictl_binary() -> Path:
    """crictl for the kink image, from deploy/images/crictl (see its go.mod for which and why), cached."""
    version = go_required(CRICTL_DIR, CRI_TOOLS_MODULE)
    if version is None:
        raise ImageBuildError(f"{CRICTL_DIR / 'go.mod'} requires no {CRI_TOOLS_MODULE}")

    def build(tmp: Path) -> None:
        package = f"{CRI_TOOLS_MODULE}/cmd/crictl"
        ldflags = f"-s -w -X {CRI_TOOLS_MODULE}/pkg/version.Version={version.removeprefix('v')}"
        run(["go", "build", "-trimpath", f"-ldflags={ldflags}", "-o", tmp, package], cwd=CRICTL_DIR, env=go_env())

    return cached("crictl", cache_key(version, go_main_inputs(CRICTL_DIR)), build, suffix="")


def toolbox_image() -> tuple[str, Path]:
    """(ref, archive) of a busybox image for tests on real nodes: Debian's static busybox with
    every applet linked (sh, sleep, cat, ls, env, ip, nslookup, wget, ...)."""
    deb_version = deb_candidate_version(TOOLBOX_PACKAGE)
    ref = _toolbox_ref(deb_version)

    def build(tmp: Path) -> None:
        with _scratch() as work:
            busybox = deb_contents(TOOLBOX_PACKAGE, deb_version, work / "deb") / "bin" / "busybox"
            root = work / "rootfs"
            _rootfs(root, {"bin/busybox": busybox})
            for applet in run([busybox, "--list-full"]).split():
                if applet != "bin/busybox":
                    link = root / applet
                    _mkdirs(root, link.parent)
                    link.symlink_to("/bin/busybox")
            origin = f"Debian {TOOLBOX_PACKAGE} {deb_version}"
            write_archive(tmp, ref, [root], ImageConfig(cmd=["sh"], env=PATH_ENV, labels=_built_from(origin)))

    return ref, cached("toolbox", cache_key(split_ref(ref)[1], [ref, deb_version]), build)


def toolbox_ref() -> str:
    """The toolbox ref a build makes now (from apt's candidate version)."""
    return _toolbox_ref(deb_candidate_version(TOOLBOX_PACKAGE))


def _toolbox_ref(deb_version: str) -> str:
    # 1:1.35.0-4+deb12u1+b1 -> 1.35.0; the image label keeps the whole Debian version.
    return f"{TOOLBOX_REPOSITORY}:{deb_version.split(':', 1)[-1].rsplit('-', 1)[0]}"


def addon_image_refs(kubernetes_version: str) -> list[str]:
    """The images the bootstrap service's addon manifests run for this version (no build)."""
    images = bootstrap.addon_images(kubernetes_version)
    return list(dict.fromkeys([images.netd, images.device_plugin, images.storage_provisioner, images.storage_helper]))


def addon_images_for(kubernetes_version: str) -> dict[str, Path]:
    """ref -> archive of every image the inner cluster's addons run (CNI, GPU plugin, storage
    provisioner and its helper, the toolbox): what a vNode image must preload for this version."""
    return {ref: build_addon_image(ref) for ref in addon_image_refs(kubernetes_version)}


def build_addon_image(ref: str) -> Path:
    """One addon image, by repository; the ref must be the one the recipe's inputs make now."""
    recipes = {
        NETD_REPOSITORY: (netd_ref, netd_image),
        GPU_PLUGIN_REPOSITORY: (gpu_plugin_ref, gpu_plugin_image),
        LOCAL_PATH_REPOSITORY: (local_path_provisioner_ref, local_path_provisioner_image),
        TOOLBOX_REPOSITORY: (toolbox_ref, lambda _: toolbox_image()[1]),
    }
    repository = split_ref(ref)[0]
    if repository not in recipes:
        raise ImageBuildError(f"no recipe builds {ref}")
    made_ref, build = recipes[repository]
    if (made := made_ref()) != ref:
        raise ImageBuildError(f"services/bootstrap/logic.py pins {ref}, but the recipe's inputs make {made}: pin that")
    return build(ref)


def netd_ref() -> str:
    """`vk8s.local/vk8s-netd:<script VERSION>-<hash of the script and the package list>`: another
    script is another ref, so vNodes that kept their containerd import it again."""
    script = NETD_SCRIPT.read_text()
    found = re.search(r"^VERSION=(\S+)$", script, re.M)
    if found is None:
        raise ImageBuildError(f"{NETD_SCRIPT} sets no VERSION=")
    return f"{NETD_REPOSITORY}:{found.group(1)}-{_digest([script, *NETD_PACKAGES])}"


def netd_image(ref: str) -> Path:
    """The inner pod network (deploy/images/netd/vk8s-netd) on Debian with the tools it runs."""
    base = debian_rootfs(NETD_PACKAGES)
    script = NETD_SCRIPT.read_text()

    def build(tmp: Path) -> None:
        with _scratch() as root:
            _rootfs(root, {"usr/local/bin/vk8s-netd": NETD_SCRIPT}, etc=False)
            origin = f"deploy/images/netd/vk8s-netd on Debian {'+'.join(NETD_PACKAGES)} (mmdebstrap)"
            config = ImageConfig(entrypoint=["/usr/local/bin/vk8s-netd"], env=PATH_ENV, labels=_built_from(origin))
            write_archive(tmp, ref, [base, root], config)

    return cached("vk8s-netd", cache_key(split_ref(ref)[1], [ref, script, str(base)]), build)


def gpu_plugin_ref() -> str:
    """`vk8s.local/vk8s-gpu-plugin:<hash of deploy/testbed/gpu-plugin's sources, tests aside>`."""
    return f"{GPU_PLUGIN_REPOSITORY}:{_digest(_gpu_plugin_sources())}"


def gpu_plugin_image(ref: str) -> Path:
    """vk8s-gpu-plugin (deploy/testbed/gpu-plugin) alone: the inner cluster's device plugin."""

    def build(tmp: Path) -> None:
        with _scratch() as work:
            binary = work / "vk8s-gpu-plugin"
            run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", binary, "."], cwd=GPU_PLUGIN_DIR, env=go_env())
            root = work / "rootfs"
            _rootfs(root, {"vk8s-gpu-plugin": binary}, etc=False)
            config = ImageConfig(entrypoint=["/vk8s-gpu-plugin"], labels=_built_from("deploy/testbed/gpu-plugin built from source"))
            write_archive(tmp, ref, [root], config)

    return cached("vk8s-gpu-plugin", cache_key(split_ref(ref)[1], [ref, *_gpu_plugin_sources()]), build)


def local_path_provisioner_ref() -> str:
    """`vk8s.local/local-path-provisioner:<the version deploy/images/local-path-provisioner requires>`."""
    go_mod = (LOCAL_PATH_DIR / "go.mod").read_text()
    found = re.search(rf"^require {re.escape(LOCAL_PATH_MODULE)} (\S+)$", go_mod, re.M)
    if found is None:
        raise ImageBuildError(f"{LOCAL_PATH_DIR / 'go.mod'} requires no {LOCAL_PATH_MODULE}")
    return f"{LOCAL_PATH_REPOSITORY}:{found.group(1)}"


def local_path_provisioner_image(ref: str) -> Path:
    """rancher's local-path-provisioner from its Go module (CGO off, static), on PATH as upstream's."""
    version = split_ref(ref)[1]

    def build(tmp: Path) -> None:
        with _scratch() as work:
            binary = work / "local-path-provisioner"
            ldflags = f"-s -w -X main.VERSION={version}"
            run(["go", "build", "-trimpath", f"-ldflags={ldflags}", "-o", binary, LOCAL_PATH_MODULE], cwd=LOCAL_PATH_DIR, env=go_env())
            root = work / "rootfs"
            _rootfs(root, {"usr/local/bin/local-path-provisioner": binary})
            config = ImageConfig(env=PATH_ENV, labels=_built_from(f"{LOCAL_PATH_MODULE} {version} built from source"))
            write_archive(tmp, ref, [root], config)

    return cached("local-path-provisioner", cache_key(version, [ref, *go_main_inputs(LOCAL_PATH_DIR)]), build)


def _gpu_plugin_sources() -> list[str]:
    files = sorted(
        p for p in GPU_PLUGIN_DIR.iterdir() if p.name in ("go.mod", "go.sum") or (p.suffix == ".go" and not p.name.endswith("_test.go"))
    )
    return [f"{path.name}:{path.read_text()}" for path in files]


def _digest(inputs: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(inputs).encode()).hexdigest()[:12]


def _rootfs(root: Path, files: Mapping[str, Path], *, etc: bool = True) -> None:
    """A tree of executables (image path -> file), with ETC_FILES and a /tmp unless `etc` is off.
    Modes are set explicitly, so the caller's umask never reaches the image."""
    root.mkdir(mode=0o755, exist_ok=True)
    if etc:
        _mkdirs(root, root / "tmp")
        (root / "tmp").chmod(0o1777)
        for relative, text in ETC_FILES.items():
            _mkdirs(root, (root / relative).parent)
            (root / relative).write_text(text)
            (root / relative).chmod(0o644)
    for relative, source in files.items():
        _mkdirs(root, (root / relative).parent)
        shutil.copyfile(source, root / relative)
        (root / relative).chmod(0o755)


def _mkdirs(root: Path, directory: Path) -> None:
    for parent in [*reversed(directory.relative_to(root).parents), directory.relative_to(root)]:
        if not (root / parent).is_dir():
            (root / parent).mkdir()
            (root / parent).chmod(0o755)


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vk8s-image-") as directory:
        yield Path(directory)


def _binary(bin_dir: Path, name: str) -> Path:
    binary = bin_dir / name
    if not binary.is_file():
        raise ImageBuildError(f"{name} is missing from {bin_dir}")
    return binary


def _check_version(binary: Path, version: str) -> None:
    found = run([binary, "--version"]).strip()
    if found != f"Kubernetes {version}":
        raise ImageBuildError(f"{binary} --version says {found!r}, not Kubernetes {version}")


def _built_from(origin: str) -> dict[str, str]:
    return {BUILT_FROM: origin}


def _name(ref: str) -> str:
    return split_ref(ref)[0].rsplit("/", 1)[-1]


def _v(version: str) -> str:
    return "v" + version.removeprefix("v")

"""The images a kubeadm cluster in vNodes runs (kubeadm's own list, at the refs it expects) and a
toolbox for tests, each built here from source or Debian packages and cached as an OCI archive."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from vk8s.images.cache import cache_key, cached, file_fingerprint
from vk8s.images.errors import ImageBuildError
from vk8s.images.oci import ImageConfig, split_ref, write_archive
from vk8s.images.sources import (
    deb_candidate_version,
    deb_contents,
    debian_rootfs,
    go_build,
    go_main_inputs,
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
COREDNS_MODULE = "github.com/coredns/coredns"
TOOLBOX_REPOSITORY = "vk8s.local/toolbox"
TOOLBOX_PACKAGE = "busybox-static"


def kubeadm_image_refs(bin_dir: Path, version: str) -> list[str]:
    """The images `kubeadm init` of this Kubernetes version runs, as the kubeadm in `bin_dir` names them."""
    version = _v(version)
    kubeadm = _binary(bin_dir, "kubeadm")
    if (found := run([kubeadm, "version", "-o", "short"]).strip()) != version:
        raise ImageBuildError(f"{kubeadm} is {found}, not {version}")
    return run([kubeadm, "config", "images", "list", "--kubernetes-version", version]).split()


def build_host_images(bin_dir: Path, kubernetes_version: str) -> dict[str, Path]:
    """ref -> archive for every image kubeadm needs (control plane, etcd, CoreDNS, pause) and the toolbox."""
    refs = kubeadm_image_refs(bin_dir, kubernetes_version)
    images = {ref: build_image(ref, bin_dir, kubernetes_version) for ref in refs}
    ref, archive = toolbox_image()
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
    module_dir = IMAGES_DIR / "etcd"

    def build(tmp: Path) -> None:
        with _scratch() as work:
            binary = go_build(module_dir, ETCD_MODULE, version, ETCD_MODULE, work / "etcd")
            root = work / "rootfs"
            _rootfs(root, {"usr/local/bin/etcd": binary})
            config = ImageConfig(env=PATH_ENV, labels=_built_from(f"{ETCD_MODULE} {version} built from source"))
            write_archive(tmp, ref, [root], config)

    return cached("etcd", cache_key(version, [ref, *go_main_inputs(module_dir)]), build)


def coredns_image(ref: str) -> Path:
    version = split_ref(ref)[1]
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

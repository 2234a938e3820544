"""The kink vNode image, built on this machine (no registry, no Docker) as an OCI archive that
`ctr -n k8s.io images import` loads, under the ref the vnode service runs (`ghcr.io/vk8s/kink:v1.36`).

Two layers:
1. a Debian bookworm rootfs from mmdebstrap (systemd 252: systemd 256 and later refuse cgroup v1)
   with systemd, containerd, runc, the CNI plugins and the tools kubeadm and the kubelet call,
   trimmed for systemd as PID 1 of a container (deploy/images/kink/local/customize-base), cached
   by suite, package list, mirrors and hook;
2. the node: kubeadm, kubelet and kubectl of the caller's bin dir, `vk8s-node` and the entrypoint
   (deploy/images/node), the production image's units (deploy/images/kink/files/systemd), a
   containerd config for a vNode on this machine kind (deploy/images/kink/local/containerd.toml)
   and the preloaded image archives under /var/lib/vk8s/images, which vk8s-preload-images.service
   imports before the kubelet starts.
The GPU variant (`...-gpu`) is the same two layers (the same blobs: importing both costs one)
plus a small third one that marks it. Its GPUs reach the inner cluster through the vk8s-gpu-plugin
DaemonSet the bootstrap stage applies; this machine has no GPUs, so no NVIDIA toolkit is in it.

deploy/images/kink/local/README.md says what differs from the production image and why.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from libs.api.versions import NodeImageCatalog, VersionError, kubernetes_minor
from vk8s.images.builders import build_host_images, crictl_binary, kubeadm_image_refs
from vk8s.images.cache import cache_key, cached, file_fingerprint, images_dir, link_into_place
from vk8s.images.errors import ImageBuildError
from vk8s.images.oci import CONTAINERD_NAME, ImageConfig, split_ref, write_archive
from vk8s.images.sources import DPKG_EXCLUDES, apt_sources, run
from vk8s.testbed.config import REPO_ROOT

log = logging.getLogger("vk8s.images")

SUITE = "bookworm"
# What systemd, containerd and the kubelet need in a vNode, and what kubeadm's preflight and the
# kubelet exec: conntrack, ebtables, ethtool, iptables/nftables, ip/tc, mount/nsenter, socat, modprobe, sysctl.
BASE_PACKAGES = (
    "bash",
    "ca-certificates",
    "conntrack",
    "containerd",
    "containernetworking-plugins",
    "dbus",
    "ebtables",
    "ethtool",
    "iproute2",
    "iptables",
    "kmod",
    "mount",
    "nftables",
    "procps",
    "runc",
    "socat",
    "systemd",
    "systemd-sysv",
    "util-linux",
)
KINK_DIR = REPO_ROOT / "deploy" / "images" / "kink"
NODE_DIR = REPO_ROOT / "deploy" / "images" / "node"
FILES_DIR = KINK_DIR / "files"
LOCAL_DIR = KINK_DIR / "local"
CUSTOMIZE_HOOK = LOCAL_DIR / "customize-base"
CONTAINERD_CONFIG = LOCAL_DIR / "containerd.toml"
SANDBOX_PLACEHOLDER = "@SANDBOX_IMAGE@"

KUBE_BINARIES = ("kubeadm", "kubelet", "kubectl")
NODE_SCRIPTS = (NODE_DIR / "vk8s-node", NODE_DIR / "vk8s-entrypoint", FILES_DIR / "vk8s-preload-images")
GPU_MARKER = "etc/vk8s/gpu-variant"
GPU_SUFFIX = "-gpu"
# Started at boot (the kubelet is not: kubeadm, vk8s-node or vk8s-node-boot start it).
BOOT_UNITS = ("containerd.service", "vk8s-node-boot.service", "vk8s-preload-images.service")
# Made empty by the image, created by kubeadm, the kubelet and vk8s-node.
EMPTY_DIRS = (
    "etc/cni/net.d",
    "etc/kubernetes/kubelet.conf.d",
    "etc/kubernetes/manifests",
    "var/lib/kubelet",
    "var/lib/vk8s-node",
)
# Read by vk8s-preload-images: "<archive>\t<ref>" per line.
PRELOAD_DIR = "var/lib/vk8s/images"
PRELOAD_LIST = "images.list"
PRELOAD_MARKER = "/run/vk8s/images-preloaded"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RECORD_SUFFIX = ".json"
# Builds kept per variant in the image cache (a kink archive is about 1 GB, the base 0.3 GB).
KEEP_BUILDS = 3


@dataclass(frozen=True)
class KinkBuild:
    """What one build made, kept beside its archive (`<archive>.json`)."""

    ref: str
    key: str
    kubernetes_version: str
    gpu: bool
    sandbox_image: str
    preloaded: tuple[str, ...]
    build_seconds: float
    size_bytes: int


def kink_ref(kubernetes_version: str, gpu: bool = False) -> str:
    """The ref the vnode service runs for this version (its default catalog), `-gpu` for the GPU variant."""
    try:
        ref = NodeImageCatalog().image_for(kubernetes_version)
    except VersionError as exc:
        raise ImageBuildError(f"no kink ref for Kubernetes {kubernetes_version}: {exc}") from exc
    return ref + GPU_SUFFIX if gpu else ref


def build_kink_image(
    bin_dir: Path, kubernetes_version: str, preload: Mapping[str, Path], gpu: bool, out_dir: Path
) -> Path:
    """The kink archive for `kubernetes_version` at `out_dir/kink-v<minor>[-gpu].tar` (a hard link
    into the image cache when on one filesystem). Built once per key (the inputs' fingerprints),
    under a lock, renamed into place when complete; `read_build_record` tells how long it took.

    `bin_dir` holds kubeadm, kubelet, kubectl of that version. `preload` maps refs to OCI archives
    (what `vk8s.images.builders.build_host_images` returns); each archive must hold its ref."""
    version = "v" + kubernetes_version.removeprefix("v")
    ref = kink_ref(version, gpu)
    binaries = {name: _binary(bin_dir, name) for name in KUBE_BINARIES}
    # Debian has no cri-tools; kubeadm 1.20 cannot start without crictl (1.34 and later do not run it).
    binaries["crictl"] = crictl_binary()
    archives = {image: Path(archive) for image, archive in sorted(preload.items())}
    for image, archive in archives.items():
        if not archive.is_file():
            raise ImageBuildError(f"the archive of {image} is missing: {archive}")
    base = base_rootfs()
    inputs = [
        ref,
        f"base:{base.parent.name}",
        *(f"{name}:{file_fingerprint(path)}" for name, path in binaries.items()),
        *(f"preload:{image}:{file_fingerprint(archive)}" for image, archive in archives.items()),
        *_recipe_inputs(),
    ]
    key = cache_key(version, inputs)
    name = "kink" + (GPU_SUFFIX if gpu else "")

    def build(tmp: Path) -> None:
        started = time.monotonic()
        sandbox = _sandbox_image(bin_dir, version)
        if sandbox not in archives:
            log.warning("no preloaded archive for %s: the vNode's kubelet would pull its sandbox image", sandbox)
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".kink-node-") as scratch:
            node = Path(scratch) / "rootfs"
            preloaded = _node_tree(node, binaries, archives, sandbox)
            config = ImageConfig(
                entrypoint=["/usr/local/bin/vk8s-entrypoint"],
                cmd=["/sbin/init"],
                # systemd recognises it runs in a container and skips what only a machine does.
                env={"PATH": PATH, "container": "docker", "VK8S_KUBERNETES_VERSION": version},
                labels={
                    "org.opencontainers.image.title": "vk8s kink node" + (" (GPU)" if gpu else ""),
                    "org.opencontainers.image.description": (
                        f"vNode image: systemd, containerd, kubelet and kubeadm {version}, built locally"
                    ),
                    "io.vk8s.kubernetes-version": version,
                },
                stop_signal="SIGRTMIN+3",
            )
            layers = [base, node]
            if gpu:
                marker = Path(scratch) / "gpu"
                _write(marker / GPU_MARKER, "GPU variant: the inner vk8s-gpu-plugin DaemonSet advertises this vNode's GPUs\n")
                layers.append(marker)
            write_archive(tmp, ref, layers, config)
        record = KinkBuild(
            ref=ref,
            key=key,
            kubernetes_version=version,
            gpu=gpu,
            sandbox_image=sandbox,
            preloaded=tuple(preloaded),
            build_seconds=round(time.monotonic() - started, 1),
            size_bytes=tmp.stat().st_size,
        )
        _write_atomically(_record_path(tmp.with_name(f"{name}.tar")), json.dumps(asdict(record), indent=2) + "\n")

    archive = cached(name, key, build)
    os.utime(archive)  # used now: the newest for _prune
    _prune(name)
    return _place(archive, out_dir / f"kink-v{kubernetes_minor(version)}{GPU_SUFFIX if gpu else ''}.tar")


def read_build_record(archive: Path) -> KinkBuild:
    """The record of the build that made `archive` (or the cache entry it links to)."""
    path = _record_path(archive)
    if not path.is_file():
        path = _record_path(archive.resolve())
    data = json.loads(path.read_text())
    return KinkBuild(**{**data, "preloaded": tuple(data["preloaded"])})


def base_rootfs() -> Path:
    """The base layer: mmdebstrap `SUITE` with `BASE_PACKAGES`, customised by CUSTOMIZE_HOOK, as an
    uncompressed tar cached under `<cache>/images/<suite>-<hash>/kink-base.tar`."""
    sources = debian_sources(SUITE)
    hook = CUSTOMIZE_HOOK.read_text()
    key = cache_key(SUITE, [*BASE_PACKAGES, *sources, *DPKG_EXCLUDES, f"hook:{hook}"])

    def build(tmp: Path) -> None:
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                "--format=tar",
                "--aptopt=APT::Install-Recommends false",
                f"--include={','.join(BASE_PACKAGES)}",
                *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
                # Copyright files stay, as Debian asks of images.
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                f"--customize-hook={CUSTOMIZE_HOOK}",
                SUITE,
                tmp,
                *sources,
            ],
            env={**os.environ, "SOURCE_DATE_EPOCH": "0"},
        )

    base = cached("kink-base", key, build)
    os.utime(base)
    _prune("kink-base")
    return base


def debian_sources(suite: str) -> list[str]:
    """This machine's Debian mirrors for `suite` (and its -updates, -security) as one-line
    `deb URI SUITE COMPONENTS` entries; other repositories (third-party, unreachable here) are left out."""
    entries: list[str] = []
    for path in apt_sources():
        stanzas = _deb822(path.read_text()) if path.suffix == ".sources" else _one_line(path.read_text())
        for fields in stanzas:
            if "deb" not in fields.get("Types", "").split():
                continue
            suites = [s for s in fields.get("Suites", "").split() if s == suite or s.startswith(f"{suite}-")]
            for uri in fields.get("URIs", "").split():
                entries += [f"deb {uri} {s} {fields.get('Components', 'main')}" for s in suites]
    if not entries:
        raise ImageBuildError(f"no Debian {suite} mirror in this machine's apt sources: mmdebstrap needs one")
    return list(dict.fromkeys(entries))


def archive_refs(archive: Path) -> list[str]:
    """The refs an OCI archive names (containerd's image-name annotations of its index)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            index = json.loads(member.read()) if member else {}
    except (tarfile.TarError, KeyError, ValueError) as exc:
        raise ImageBuildError(f"{archive} is not an OCI archive: {exc}") from exc
    return [m["annotations"][CONTAINERD_NAME] for m in index.get("manifests", []) if CONTAINERD_NAME in m.get("annotations", {})]


def _node_tree(root: Path, binaries: Mapping[str, Path], archives: Mapping[str, Path], sandbox: str) -> list[str]:
    """The second layer's tree under `root`; returns the preloaded refs."""
    _mkdir(root)
    bin_dir = root / "usr" / "local" / "bin"
    for name, path in binaries.items():
        _install(path, bin_dir / name, 0o755)
    for script in NODE_SCRIPTS:
        _install(script, bin_dir / script.name, 0o755)
    # The production unit runs the containerd of its release tarball; here it is Debian's.
    (bin_dir / "containerd").symlink_to("/usr/bin/containerd")
    units = root / "etc" / "systemd" / "system"
    _copy_tree(FILES_DIR / "systemd", units)

    wants = units / "multi-user.target.wants"
    _mkdir(wants)
    for unit in BOOT_UNITS:
        if not (units / unit).is_file():
            raise ImageBuildError(f"unit {unit} is missing from {FILES_DIR / 'systemd'}")
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    containerd = CONTAINERD_CONFIG.read_text()
    if SANDBOX_PLACEHOLDER not in containerd:
        raise ImageBuildError(f"{CONTAINERD_CONFIG} has no {SANDBOX_PLACEHOLDER}")
    _write(root / "etc" / "containerd" / "config.toml", containerd.replace(SANDBOX_PLACEHOLDER, sandbox))
    _install(FILES_DIR / "crictl.yaml", root / "etc" / "crictl.yaml", 0o644)
    for directory in EMPTY_DIRS:
        _mkdir(root / directory)
    images = root / PRELOAD_DIR
    _mkdir(images)
    lines, refs = [], []
    for number, (image, archive) in enumerate(archives.items()):
        if image not in archive_refs(archive):
            raise ImageBuildError(f"{archive} does not hold {image} (it names {archive_refs(archive)})")
        file = f"{number:02d}-{split_ref(image)[0].rsplit('/', 1)[-1]}.tar"
        _install(archive, images / file, 0o644)
        lines.append(f"{file}\t{image}\n")
        refs.append(image)
    if lines:
        _write(images / PRELOAD_LIST, "".join(lines))
    return refs


def _sandbox_image(bin_dir: Path, version: str) -> str:
    """The pause image the kubeadm of `bin_dir` names, which the vNode's containerd must use too."""
    pause = [ref for ref in kubeadm_image_refs(bin_dir, version) if split_ref(ref)[0].endswith("/pause")]
    if len(pause) != 1:
        raise ImageBuildError(f"kubeadm {version} names no single pause image: {pause}")
    return pause[0]


def _recipe_inputs() -> list[str]:
    """Every file the node layer is made of, by content."""
    files = [*NODE_SCRIPTS, CONTAINERD_CONFIG, FILES_DIR / "crictl.yaml"]
    files += sorted(p for p in (FILES_DIR / "systemd").rglob("*") if p.is_file())
    return [f"{path.relative_to(REPO_ROOT)}:{hashlib.sha256(path.read_bytes()).hexdigest()}" for path in files]


def _binary(bin_dir: Path, name: str) -> Path:
    path = bin_dir / name
    if not path.is_file():
        raise ImageBuildError(f"{name} is missing from {bin_dir}")
    return path


def _mkdir(path: Path) -> None:
    """Creates `path` and its missing parents with mode 0755, whatever the umask."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir()
        directory.chmod(0o755)


def _install(source: Path, dest: Path, mode: int) -> None:
    """A hard link when `source` already has `mode` (large binaries and archives), else a copy."""
    _mkdir(dest.parent)
    if source.stat().st_mode & 0o7777 == mode:
        try:
            os.link(source, dest)
            return
        except OSError:  # another filesystem
            pass
    shutil.copyfile(source, dest)
    dest.chmod(mode)


def _copy_tree(source: Path, dest: Path) -> None:
    _mkdir(dest)
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_dir():
            _mkdir(target)
        else:
            _install(path, target, 0o644)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    _mkdir(path.parent)
    path.write_text(text)
    path.chmod(mode)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _record_path(archive: Path) -> Path:
    return archive.with_name(archive.name + RECORD_SUFFIX)


def _place(archive: Path, dest: Path) -> Path:
    """`archive` at `dest`, with its build record."""
    _mkdir(dest.parent)
    for source, target in ((_record_path(archive), _record_path(dest)), (archive, dest)):
        if source.exists():
            link_into_place(source, target)
    return dest


def _prune(name: str, keep: int = KEEP_BUILDS) -> None:
    """Removes the cache's builds of `name` but the newest `keep` (by mtime). One being built or
    removed by another process (its lock held) is left alone; a hard link placed elsewhere stays valid."""
    found = []
    for archive in images_dir().glob(f"*/{name}.tar"):
        try:
            found.append((archive.stat().st_mtime, archive))
        except FileNotFoundError:
            continue
    for _, archive in sorted(found, reverse=True)[keep:]:
        lock_path = archive.with_name(f"{name}.lock")
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            log.info("removing the old build %s", archive)
            for path in (archive, _record_path(archive), lock_path):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            archive.parent.rmdir()


def _deb822(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last = ""
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                stanzas.append(fields)
            fields, last = {}, ""
        elif line.startswith("#"):
            continue
        elif line[0].isspace() and last:
            fields[last] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return stanzas


def _one_line(text: str) -> list[dict[str, str]]:
    stanzas = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[1:2] and words[1].startswith("["):  # deb [options] uri suite components
            while words[1:] and not words[1].endswith("]"):
                del words[1]
            del words[1]
        if len(words) >= 3:
            stanzas.append({"Types": words[0], "URIs": words[1], "Suites": words[2], "Components": " ".join(words[3:])})
    return stanzas


@click.command()
@click.option("--kubernetes-version", required=True, help="e.g. 1.36.3")
@click.option(
    "--bin-dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="Holds kubeadm, kubelet, kubectl of that version.",
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Where the archive goes.")
@click.option("--gpu", is_flag=True, help="The GPU variant (ref suffix -gpu).")
@click.option("--no-preload", is_flag=True, help="Without kubeadm's images (the vNode would have to pull them).")
def main(kubernetes_version: str, bin_dir: Path, out: Path, gpu: bool, no_preload: bool) -> None:
    """`python -m vk8s.images.kink`: builds (or reuses) the kink archive and prints its path."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        preload = {} if no_preload else build_host_images(bin_dir, kubernetes_version)
        archive = build_kink_image(bin_dir, kubernetes_version, preload, gpu, out)
    except ImageBuildError as exc:
        raise click.ClickException(str(exc)) from exc
    record = read_build_record(archive)
    log.info("%s: %.0f MB, built in %.1fs", record.ref, record.size_bytes / 1e6, record.build_seconds)
    click.echo(archive)


if __name__ == "__main__":
    main()

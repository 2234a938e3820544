"""The real host tier: kubelets with containerd and runc instead of kwok, isolated from the machine.

The supervisor moves itself into a network and mount namespace of its own before it starts
anything (`namespaces`), so the control plane, the nodes and every pod address exist only there;
the apiserver is reached from the machine through a loopback forwarder bound beforehand. Each node
(`node`) is a containerd, a kubelet and a fake-GPU device plugin sharing a private mount namespace
of their own (the kubelet ignores `--root-dir` for some paths). Pods get addresses from a bridge
plus the project's IPAM plugin (`cni_ipam`), which honours the fixed-IP annotation; claims are
served by a local volume provisioner (`volumes`). `sweep` removes what a crashed testbed left.
"""

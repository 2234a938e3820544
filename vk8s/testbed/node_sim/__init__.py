"""Simulated OS tools of a vNode for the testbed.

`exec` into a pod on a simulated host runs the real `vk8s-node` script in that pod's sandbox with
`bin/` here first on PATH, so its `kubeadm`, `kubelet`, `systemctl`, `modprobe`, `sysctl`,
`nvidia-smi` and `containerd` are these shims. `kubeadm init` starts a real inner control plane
(kube-apiserver on the testbed's etcd under a prefix of its own, controller-manager, scheduler
and a kwok that plays the inner nodes); `kubeadm join` goes through real bootstrap-token
discovery and a kubelet client certificate signed by the inner controller-manager.
"""

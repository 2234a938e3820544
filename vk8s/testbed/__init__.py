"""A real Kubernetes control plane on loopback (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) with kwok simulating GPU host nodes; for tests and the local demo."""

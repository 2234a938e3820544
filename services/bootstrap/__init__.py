"""The bootstrap stage: kubeadm init and join inside the vNode pods over `pods/exec`, then CNI,
ip-masq-agent and the GPU device plugin; the inner admin kubeconfig lands in a host Secret."""

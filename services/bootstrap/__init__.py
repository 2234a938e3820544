"""The bootstrap stage: kubeadm init and join inside the vNode pods over `pods/exec`, then the
CNI (vk8s-netd, which also masquerades), the GPU device plugin and a default StorageClass;
the inner admin kubeconfig lands in a host Secret."""

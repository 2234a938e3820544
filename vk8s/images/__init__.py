"""Container images built on this machine (no registry is reachable) as OCI archives that
`ctr -n k8s.io images import` loads: kubeadm's control-plane set and a test toolbox."""

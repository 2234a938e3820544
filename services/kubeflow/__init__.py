"""The kubeflow stage: installs the Kubeflow release matching the cluster's Kubernetes version
into the virtual cluster, creates the user, and reports readiness."""

"""The gateway's I/O: Kubernetes (Vk8s objects, Secrets, Events), its NATS KV ledger, metrics."""

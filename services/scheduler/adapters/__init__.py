"""The scheduler's I/O: the Kubernetes inventory watch, the NATS KV ledger, metrics."""

"""The projector's I/O: NATS KV read model, Kubernetes status writer, HTTP read API, metrics."""

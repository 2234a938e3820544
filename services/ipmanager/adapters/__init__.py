"""Adapters of the ipmanager: NATS KV state, Kubernetes pods, the HTTP read API, metrics."""

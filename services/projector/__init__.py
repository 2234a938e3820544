"""Projector: folds every cluster event into a read model (NATS KV) and the Vk8s status."""

"""What the vnode service talks to: the host cluster, its NATS KV bucket, and its metrics."""

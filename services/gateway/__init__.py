"""The gateway: where clusters enter the pipeline.

Two entry points converge on one Vk8s object per cluster: `kubectl apply` of a Vk8s (the watch
publishes `cluster.requested` for it) and `cluster.requested` sent on NATS (the gateway creates
the object). Only the gateway consumes `cluster.requested`; it answers with `cluster.rejected`, or
with `cluster.accepted` built from the object under the id `accepted-<uid>-<generation>`, so the
pipeline starts once per cluster whichever way it came. Later changes go out as `cluster.updated`,
deletion as `cluster.delete.requested`; the cleanup finalizer goes once `cluster.deleted` arrives.
"""

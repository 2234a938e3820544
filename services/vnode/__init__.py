"""The vnode stage: turns a placed cluster into vNodes on the host cluster.

cluster.accepted / cluster.updated    -> keeps the spec (KV bucket `vk8s-vnode`); applies label,
                                         annotation, port and pause changes to an allocated cluster
cluster.ips.allocated                 -> one StatefulSet per vNode pinned to its host, with its
                                         fixed IP, then cluster.vnodes.ready once all pods run
cluster.updated (paused)              -> replicas 0, then cluster.paused once all pods are gone
cluster.delete.requested              -> deletes everything (volumes unless retained), then
                                         cluster.vnodes.deleted

Names and object shapes: `services.vnode.logic`. Metrics: `services.vnode.adapters.metrics`.
Host-cluster permissions it needs: get on vk8s (and update on vk8s/finalizers, for owner references
that block deletion); get/list/watch/patch/delete on statefulsets, deployments, services;
list/delete on persistentvolumeclaims; list on pods.
"""

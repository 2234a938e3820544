"""ipmanager: the network of every virtual cluster.

- claims each cluster's pod and service CIDRs on cluster.accepted / cluster.updated (given ones
  are checked against the host's ranges and every other cluster; missing ones are carved from
  the configured pools);
- hands every vNode a fixed pod IP from the reserved vNode pool on cluster.scheduled and
  publishes cluster.ips.allocated (the vnode stage puts it in Calico's ipAddrs annotation);
- releases both on cluster.vnodes.deleted, in every namespace, and publishes cluster.ips.released;
- reconciles its NATS KV state against live vNode pods and reports (and, after a grace period,
  releases) orphaned addresses; serves a read-only JSON API for operators.
"""

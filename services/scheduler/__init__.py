"""scheduler: puts every vNode of a virtual cluster on a host node, all or none.

- keeps an inventory of the host nodes from the Kubernetes API (allocatable minus the requests
  of every pod bound to them, taints, cordons, GPU model and zone labels);
- on cluster.accepted / cluster.updated places the cluster's vNodes (best fit for GPUs, GPU
  model, taints, zone spread), books them in a NATS KV ledger by compare-and-set and publishes
  cluster.scheduled, or cluster.unschedulable with a reason per vNode and keeps the cluster
  pending until capacity grows;
- holds a reservation until cluster.vnodes.ready confirms it (a sweep releases expired holds);
  releases it on cluster.paused, cluster.failed and cluster.ips.released, the last one ending the
  delete chain with cluster.deleted.
"""

"""Simulated GPU host nodes, labelled the way GPU feature discovery and a cloud provider label them."""

from __future__ import annotations

import uuid
from typing import Any

from vk8s.testbed.config import (
    FAKE_NODE_ANNOTATION,
    GPU_COUNT_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    GPU_TOPOLOGY_LABEL,
    LOOPBACK,
    REGION_LABEL,
    ZONE_LABEL,
    FleetSpec,
    pinned_versions,
)


def node_labels(fleet: FleetSpec, index: int) -> dict[str, str]:
    """What GPU feature discovery and a cloud provider would label host `index` with."""
    labels = {
        "node.kubernetes.io/instance-type": f"{fleet.runtime}-gpu",
        "type": fleet.runtime,
        REGION_LABEL: fleet.region,
        ZONE_LABEL: fleet.zones[index % len(fleet.zones)],
    }
    if fleet.gpus_per_node:
        labels |= {
            GPU_PRODUCT_LABEL: fleet.gpu_model,
            GPU_COUNT_LABEL: str(fleet.gpus_per_node),
            GPU_TOPOLOGY_LABEL: fleet.gpu_topology,
        }
    return labels


def node_manifests(fleet: FleetSpec) -> list[dict[str, Any]]:
    """One Node per simulated host; zones round-robin so every zone gets a share."""
    annotation_key, annotation_value = FAKE_NODE_ANNOTATION
    capacity = {"cpu": fleet.cpu, "memory": fleet.memory, "pods": str(fleet.max_pods)}
    if fleet.gpus_per_node:
        capacity[GPU_RESOURCE] = str(fleet.gpus_per_node)
    # Reported like a kubelet of the control plane's version, so version-skew checks see a sane fleet.
    versions = pinned_versions()
    kubelet_version, kwok_version = f"v{versions['KUBERNETES_VERSION']}", f"v{versions['KWOK_VERSION']}"
    manifests = []
    for index, name in enumerate(fleet.node_names()):
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **node_labels(fleet, index),
        }
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": {
                        annotation_key: annotation_value,
                        "node.alpha.kubernetes.io/ttl": "0",
                    },
                },
                "spec": {},
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    # The apiserver reaches each node's "kubelet" (kwok's server) at this address.
                    "addresses": [
                        {"type": "InternalIP", "address": LOOPBACK},
                        {"type": "Hostname", "address": name},
                    ],
                    "nodeInfo": {
                        "architecture": "amd64",
                        "operatingSystem": "linux",
                        "osImage": "vk8s simulated GPU host",
                        "kernelVersion": "kwok",
                        "containerRuntimeVersion": "kwok://" + kwok_version,
                        "kubeletVersion": kubelet_version,
                        "kubeProxyVersion": kubelet_version,
                        "machineID": name,
                        "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.{fleet.region}")),
                        "bootID": "",
                    },
                },
            }
        )
    return manifests

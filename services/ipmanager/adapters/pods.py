"""Which vNode addresses live pods hold, in every namespace (the original looked only in `default`)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, ip_address
from typing import Any

import structlog
from kubernetes.aio import client

from libs.kube import name_of, namespace_of

log = structlog.get_logger(__name__)

# The vnode stage puts the allocated address here; Calico's CNI plugin assigns it to the pod.
CALICO_IP_ADDRS_ANNOTATION = "cni.projectcalico.org/ipAddrs"


class VNodePods:
    def __init__(self, api: client.ApiClient, selector: str, *, page_size: int = 500):
        self._core = client.CoreV1Api(api)
        self._selector = selector
        self._page_size = page_size

    async def addresses(self) -> dict[IPv4Address, str]:
        """Address -> `namespace/pod` for every pod the selector matches. Both the annotation and the
        pod's status count, so a pod still Pending (no IP yet) keeps its address too."""
        found: dict[IPv4Address, str] = {}
        token: str | None = None
        while True:
            page = await self._core.list_pod_for_all_namespaces(
                label_selector=self._selector, limit=self._page_size, _continue=token
            )
            for pod in page.items:
                name = f"{namespace_of(pod)}/{name_of(pod)}"
                for address in _pod_addresses(pod, name):
                    found[address] = name
            token = page.metadata.var_continue if page.metadata is not None else None
            if not token:
                return found


def _pod_addresses(pod: Any, name: str) -> set[IPv4Address]:
    texts: list[str] = []
    annotation = (pod.metadata.annotations or {}).get(CALICO_IP_ADDRS_ANNOTATION)
    if annotation:
        try:
            parsed = json.loads(annotation)
            texts.extend(parsed if isinstance(parsed, list) else [])
        except json.JSONDecodeError:
            log.warning("Ignoring unreadable ipAddrs annotation", pod=name, value=annotation[:100])
    status = pod.status
    if status is not None:
        texts.extend(entry.ip for entry in status.pod_ips or [] if entry.ip)
        if status.pod_ip:
            texts.append(status.pod_ip)
    addresses = set()
    for text in texts:
        try:
            address = ip_address(str(text))
        except ValueError:
            log.warning("Ignoring a pod address that is not an IP", pod=name, value=str(text)[:100])
            continue
        if isinstance(address, IPv4Address):
            addresses.add(address)
    return addresses
